"""Records as the leaderboard reads them: one run per valid record, every field read defensively."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.deprecation import current_method_names

MISSING = "–"
UTILITY_ONLY = "utility_only"
#: the schema's utility field that plots and Pareto fronts use (higher is better); others go to the detail
PRIMARY_UTILITY = "accuracy"
#: no generated table has more columns than this; wider content is split into several tables
MAX_TABLE_COLUMNS = 10
#: no generated cell is longer than this (a setting that says more is cut, and given whole below the table and in the CSV)
MAX_CELL_CHARS = 72
#: no table line is longer than this (the scorecard's sentences are the longest)
MAX_LINE_CHARS = 480
#: harness cost fields (bench.harness.measure_cost), shown in the headline when any row has them
_RELEASED, _PARAMETERS, _NONZERO, _COMPRESSION = ("released_bytes_per_sample", "parameters", "nonzero_parameters",
                                                  "compression_ratio")
#: hyper-parameters that say where data lives or how fast it loads, not what is measured
_NOT_A_SETTING = {"data_spec", "network", "data_dir", "download", "num_workers", "eval_batch_size", "progress"}
NOT_CONVERGED = "⚠"
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


def pareto_front(points: Sequence[tuple[float, float]], x_higher_better: bool = True,
                 y_higher_better: bool = True) -> list[int]:
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
    """One privacy entry of a record, read defensively."""

    attack: str
    threat_model: str
    role: str
    metrics: dict[str, float]
    directions: dict[str, str]
    primary: Optional[str]
    config: dict[str, Any]
    converged: Optional[bool]
    intervals: dict[str, tuple[float, float]]

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


def _entry(raw: dict) -> _Entry:
    details = _mapping(raw.get("details"))
    converged = details.get("converged")
    directions = {str(m): d for m, d in _mapping(raw.get("directions")).items() if d in ("higher", "lower")}
    metrics = {str(m): v for m, raw_value in _mapping(raw.get("metrics")).items() if (v := _finite(raw_value)) is not None}
    primary = raw.get("primary_metric") if isinstance(raw.get("primary_metric"), str) else None
    return _Entry(str(raw["attack"]), str(raw["threat_model"]), "diagnostic" if raw.get("role") == "diagnostic" else "adversary",
                  metrics, directions, primary, _mapping(raw.get("config")),
                  converged if isinstance(converged, bool) else None, _intervals(details))


def _arguments(section: Any) -> dict[str, Any]:
    section = _mapping(section)
    arguments = section.get("hparams", section.get("init_args", {}))
    return {str(k): v for k, v in _mapping(arguments).items() if not str(k).startswith("_") and k not in _NOT_A_SETTING}


def _precision(value: Any) -> str:
    """Lightning's precision spellings, one name each (None: the default, 32-true)."""
    text = "32" if value is None else str(value)
    return {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}.get(text, text)


@dataclass
class _Run:
    """One valid record, with everything the leaderboard reads from it."""

    record: dict
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
    def method(self) -> dict:
        return self.record["method"]

    def entries_of(self, threat_model: Optional[str]) -> dict[str, _Entry]:
        found: dict[str, _Entry] = {}
        for entry in self.entries:
            if entry.threat_model == threat_model:
                found.setdefault(entry.attack, entry)  # the first of an attack wins
        return found


def _budget(record: dict) -> Optional[tuple[str, int]]:
    """The epochs actually trained (records say so since they carry `training`), else the configured budget."""
    training = _mapping(record.get("training"))
    if isinstance(training.get("epochs"), int) and not isinstance(training["epochs"], bool):
        return "epochs", training["epochs"]
    trainer = _mapping(record["config"].get("trainer"))
    for key, kind in (("max_epochs", "epochs"), ("max_steps", "steps")):  # Lightning: None or -1 is no limit
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return kind, value
    return None


def _world_size(record: dict) -> int:
    for source in (_mapping(record.get("training")), _mapping(record["config"].get("trainer"))):
        if isinstance(source.get("world_size"), int) and source["world_size"] > 0:
            return source["world_size"]
    trainer = _mapping(record["config"].get("trainer"))
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes", 1)
    if isinstance(devices, int) and devices > 0 and isinstance(nodes, int) and nodes > 0:
        return devices * nodes
    return 1


def _config_names(config: dict) -> tuple[str, ...]:
    """The shipped config names (or file names) a run was started with."""
    names = []
    files = config.get("config")
    for item in files if isinstance(files, list) else [files] if isinstance(files, str) else []:
        text = str(item).replace("\\", "/")
        text = text.split("/bench/configs/", 1)[1] if "/bench/configs/" in text else text.rsplit("/", 1)[-1]
        names.append(text[:-5] if text.endswith(".yaml") else text)
    return tuple(names)


def _degenerate(record: dict) -> bool:
    return record.get("degenerate") is True or _mapping(record.get("utility")).get("degenerate") is True


def _read(record: dict, path: Path) -> _Run:
    """Everything the leaderboard needs from a record; TypeError/KeyError/ValueError say it is unusable.

    The method's arguments and network are read under their current names (:mod:`bench.deprecation`): a
    record written before a rename joins the rows of new runs of the same setting.
    """
    method = current_method_names(_mapping(record["method"]))
    record = {**record, "method": method}
    for key in ("name", "label"):
        if not isinstance(method.get(key), str):
            raise ValueError(f"method.{key} must be a string")
    if not isinstance(_mapping(record["dataset"]).get("name"), str):
        raise ValueError("dataset.name must be a string")
    if not isinstance(record.get("privacy"), list) or not all(isinstance(e, dict) for e in record["privacy"]):
        raise ValueError("privacy must be a list of objects")
    entries = [_entry(raw) for raw in record["privacy"]]
    utility = {str(k): v for k, raw in _mapping(record.get("utility")).items() if (v := _finite(raw)) is not None}
    cost = {str(k): v for k, raw in _mapping(record.get("cost")).items() if (v := _finite(raw)) is not None}
    if _PARAMETERS in cost and _NONZERO in cost and _COMPRESSION not in cost:  # records from before the harness said so
        cost[_COMPRESSION] = cost[_PARAMETERS] / max(cost[_NONZERO], 1.0)
    config = _mapping(record.get("config"))
    trainer = _mapping(config.get("trainer"))
    world = _world_size(record)
    batch = _mapping(_mapping(config.get("data")).get("init_args")).get("batch_size")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    accumulate = accumulate if isinstance(accumulate, int) and accumulate > 0 else 1
    effective = batch * world * accumulate if isinstance(batch, int) and not isinstance(batch, bool) else None
    experiment = record.get("experiment")
    declared = method.get("headline_cost")
    declared = tuple(str(k) for k in declared) if isinstance(declared, list) else ()
    revision = _mapping(record.get("software")).get("git_revision")
    return _Run(record, path, entries, utility, cost, _budget(record), world, effective,
                _precision(trainer.get("precision")), experiment if isinstance(experiment, str) and experiment else None,
                declared, _mapping(record.get("paper")), _config_names(config),
                revision if isinstance(revision, str) else None)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
