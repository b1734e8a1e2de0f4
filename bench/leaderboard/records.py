"""Records as the leaderboard reads them: one run per valid record, every field read defensively."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.deprecation import current_method_names
from bench.records import DatasetInfo, MethodInfo, PrivacyEntry, Record

MISSING = "–"
UTILITY_ONLY = "utility_only"
#: the schema's utility field that plots and Pareto fronts use (higher is better); others go to the detail
PRIMARY_UTILITY = "accuracy"
#: no generated table has more columns than this; wider content is split into several tables
MAX_TABLE_COLUMNS = 10
#: no generated cell is longer than this (a setting that says more is cut, and given whole below the table
#: and in the CSV)
MAX_CELL_CHARS = 72
#: no table line is longer than this (the scorecard's sentences are the longest)
MAX_LINE_CHARS = 480
#: harness cost fields (bench.harness.measure_cost), shown in the headline when any row has them
_RELEASED, _PARAMETERS, _NONZERO, _COMPRESSION = (
    "released_bytes_per_sample",
    "parameters",
    "nonzero_parameters",
    "compression_ratio",
)
#: hyper-parameters that say where data lives or how fast it loads, not what is measured
_NOT_A_SETTING = {"data_spec", "network", "data_dir", "download", "num_workers", "eval_batch_size", "progress"}
NOT_CONVERGED = "⚠"
#: an adversary that failed after training: no result, so the worst case over the others may understate the leakage
FAILED = "✗"
PARETO = "★"
_THREAT_MODEL_TITLES = {UTILITY_ONLY: "Utility only (no privacy evaluation)"}


@dataclass
class LeaderboardResult:
    markdown: Path
    csv: Path
    plots: list[Path]
    problems: list[tuple[Path, str]]  # records and claims files that were skipped, and why
    rows: int
    left_out: list[tuple[Path, str]] = field(default_factory=list)  # valid records not shown (degenerate runs)


def pareto_front(
    points: Sequence[tuple[float, float]], x_higher_better: bool = True, y_higher_better: bool = True
) -> list[int]:
    """Indices (ascending) of the points no other point dominates; equal points all stay."""
    sx, sy = (1.0 if x_higher_better else -1.0), (1.0 if y_higher_better else -1.0)
    order = sorted(range(len(points)), key=lambda i: (-sx * points[i][0], -sy * points[i][1]))
    front, best_y = [], -math.inf  # best_y: the best y among points strictly better in x
    for _, same_x in itertools.groupby(order, key=lambda i: sx * points[i][0]):
        same_x = list(same_x)
        top = sy * points[same_x[0]][1]  # sorted best-first within equal x
        front += [i for i in same_x if sy * points[i][1] == top and top > best_y]
        best_y = max(best_y, top)
    return sorted(front)


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


@dataclass
class _Entry:
    """One privacy entry of a record, as the tables use it (finite metrics, known directions)."""

    attack: str
    threat_model: str
    role: str
    metrics: dict[str, float]
    directions: dict[str, str]
    primary: Optional[str]
    config: dict[str, Any]
    converged: Optional[bool]
    intervals: dict[str, tuple[float, float]]
    #: "ExceptionType: first line" of an attack that failed after training (no metrics then)
    error: Optional[str] = None
    #: {metric: its value at chance} where the record says (an identification rate's 1 / gallery size)
    chances: dict[str, float] = field(default_factory=dict)

    @property
    def adversary(self) -> bool:
        return self.role != "diagnostic"


def _intervals(details: dict) -> dict[str, tuple[float, float]]:
    """``details.intervals``: {metric: [low, high]} or {metric: {low, high}}, where an attack reports them."""
    found = {}
    for metric, interval in _mapping(details.get("intervals")).items():
        if isinstance(interval, dict):
            interval = [interval.get("low"), interval.get("high")]
        if isinstance(interval, (list, tuple)) and len(interval) == 2:
            low, high = map(_finite, interval)
            if low is not None and high is not None:
                found[str(metric)] = (low, high)
    return found


def _chances(details: dict) -> dict[str, float]:
    """Chance levels a record states: ``details.chance`` ({metric: value}) and the identification rates' own
    (``details.identification.{pixel,features}.chance``, see bench.metrics.reconstruction.identification_rate)."""
    found = {str(m): v for m, raw in _mapping(details.get("chance")).items() if (v := _finite(raw)) is not None}
    identification = _mapping(details.get("identification"))
    for space, metric in (("pixel", "identification_rate"), ("features", "identification_rate_features")):
        if (chance := _finite(_mapping(identification.get(space)).get("chance"))) is not None:
            found.setdefault(metric, chance)
    return found


def _entry(entry: PrivacyEntry) -> _Entry:
    details = _mapping(entry.details)
    converged = details.get("converged")
    metrics = {str(m): v for m, raw_value in entry.metrics.items() if (v := _finite(raw_value)) is not None}
    return _Entry(
        entry.attack,
        entry.threat_model,
        entry.role,
        metrics,
        dict(entry.directions),
        entry.primary_metric,
        _mapping(entry.config),
        converged if isinstance(converged, bool) else None,
        _intervals(details),
        entry.error,
        _chances(details),
    )


def _settings_of(arguments: Any) -> dict[str, Any]:
    """The arguments (a method's ``hparams``, a data module's ``init_args``) that say what was measured."""
    return {str(k): v for k, v in _mapping(arguments).items() if not str(k).startswith("_") and k not in _NOT_A_SETTING}


@dataclass
class _Run:
    """One valid record, with everything the leaderboard reads from it."""

    #: the typed record, as read
    model: Record
    #: the record's method under its current names (:mod:`bench.deprecation`), which the rows group by
    method: MethodInfo
    path: Path
    entries: list[_Entry]
    utility: dict[str, float]
    cost: dict[str, float]
    budget: Optional[tuple[str, int]]
    world_size: int
    effective_batch: Optional[int]
    precision: str
    experiment: Optional[str]
    headline_cost: tuple[str, ...]
    paper: dict[str, Any]
    configs: tuple[str, ...]
    revision: Optional[str]

    @property
    def dataset(self) -> DatasetInfo:
        return self.model.dataset

    @property
    def read_order(self) -> tuple[str, str]:
        """(created, record id): runs are taken in this order, so that a later record of a seed replaces an earlier."""
        return (self.model.created, self.model.record_id)

    @property
    def seed_identity(self) -> Any:
        """What makes two records of one row the same seed: (training seed, data seed), or the record itself when the
        training was not seeded (a re-evaluation of the same run replaces the older record instead of posing as a seed).
        """
        return (self.model.seed, self.dataset.seed) if self.model.seed is not None else self.model.record_id

    @property
    def data_settings(self) -> dict[str, Any]:
        """The data module's arguments in the run's configuration (``config.data.init_args``) that are settings."""
        data = _mapping(self.model.config.get("data"))
        return _settings_of(data.get("hparams", data.get("init_args", {})))

    def entries_of(self, threat_model: Optional[str]) -> dict[str, _Entry]:
        found: dict[str, _Entry] = {}
        for entry in self.entries:
            if entry.threat_model == threat_model:
                found.setdefault(entry.attack, entry)  # the first of an attack wins
        return found


def _finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    return {str(k): v for k, raw in values.items() if (v := _finite(raw)) is not None}


def _read(record: Record, path: Path) -> _Run:
    """Everything the leaderboard needs from a (validated) record; the run facts are the record's own.

    The method's arguments and network are read under their current names (:mod:`bench.deprecation`): a
    record written before a rename joins the rows of new runs of the same setting.
    """
    method = current_method_names(record.method.model_dump(mode="json", by_alias=True, exclude_unset=True))
    cost = _finite_numbers(record.cost)
    if _PARAMETERS in cost and _NONZERO in cost and _COMPRESSION not in cost:  # records from before the harness said so
        cost[_COMPRESSION] = cost[_PARAMETERS] / max(cost[_NONZERO], 1.0)
    facts = record.run
    budget = (facts.budget.unit, facts.budget.value) if facts.budget is not None else None
    return _Run(
        record,
        MethodInfo.model_validate(method),
        path,
        [_entry(entry) for entry in record.privacy],
        _finite_numbers(record.utility),
        cost,
        budget,
        facts.world_size,
        facts.effective_batch,
        facts.precision,
        record.experiment or None,
        record.method.declared_headline_cost,
        _mapping(record.paper),
        tuple(facts.config_names),
        record.git_revision,
    )


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
