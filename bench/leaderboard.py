"""The leaderboard: result records in; a README.md, a CSV and privacy-utility plots out.

What a reader gets, in page order:

1. **Scorecard.** Per paper, each claim the suite measures (from ``bench/claims/*.yaml``, see
   :mod:`bench.claims`): the paper's number, ours, and whether it was reproduced.
2. **One section per threat model, one table and one plot per experiment.** An experiment is a set
   of rows that may be ranked against each other: records that name the same ``experiment``, or
   else records with the same dataset and pools, training budget (epochs), world size, effective
   batch size and precision whose common attacks ran with the same configuration. Inside an
   experiment a row is one setting (method, network, every hyper-parameter, attack configurations,
   world size, effective batch, precision); its seeds are averaged (mean ± sample std).
3. **The verdict is the worst case.** The headline table gives per row: utility, the
   *worst-case privacy* (the best result any adversary of the threat model achieved, i.e. the
   least private value of the attack's primary metric, following the direction the attack
   declares) and the attack that achieved it, cost, and seeds. The worst case is taken per seed
   and then averaged over seeds. Attacks are only compared on the same metric: adversaries whose
   primary metrics differ (e.g. a mean reconstruction error and the largest similarity over a
   released training set) each give their own worst-case column. Diagnostics (``role:
   diagnostic``: attacks that use the method's own training-time parts) never enter the verdict;
   they are shown apart, under each experiment's per-attack detail.

Nothing here names a method or one method's metric: utility comes from ``utility``, privacy columns
and directions from what each attack declares (``primary_metric``, ``directions``), cost from the
harness's cost fields plus the entries a method declares in ``method.headline_cost`` (its
``training_report`` keys) or that the paper reports for the run. Records flagged degenerate (a run
at chance accuracy) are left out of the tables by default; an attack that stopped at its maximum
budget without converging (``details.converged: false``) is flagged where it is shown. The output
carries no timestamps: the same records always give the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from bench.claims import ClaimsError, Setting, evaluate_claims, load_claims, shipped_claims
from bench.records import load_records
from bench.threat_models import ThreatModel

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


# ---------------------------------------------------------------------------------------------- records
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
    """Everything the leaderboard needs from a record; TypeError/KeyError/ValueError say it is unusable."""
    method = _mapping(record["method"])
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


# ---------------------------------------------------------------------------------------------- worst case
@dataclass(frozen=True)
class _Family:
    """Attacks compared on one metric, in one direction (which way means more privacy)."""

    metric: str
    direction: str  # "higher" or "lower": more private

    @property
    def arrow(self) -> str:
        return "↑" if self.direction == "higher" else "↓"


def _attacker_best(values: Sequence[tuple[float, str]], direction: str) -> tuple[float, str]:
    """The least private value (the attacker's best): the minimum of a "higher is more private" metric."""
    pick = min if direction == "higher" else max
    best = pick(value for value, _ in values)
    return best, min(attack for value, attack in values if value == best)  # ties: the first attack by name


def worst_case(entries: Sequence[_Entry], threat_model: str, metric: str,
               primary_only: bool = True) -> Optional[tuple[float, str, str]]:
    """(value, attack, direction) of the strongest adversary of ``threat_model`` on ``metric``, or None.

    ``primary_only``: only attacks whose primary metric is ``metric`` (the headline); otherwise every
    adversary that reports it (the claims). Raises ValueError when attacks disagree on its direction.
    """
    candidates = [e for e in entries if e.adversary and e.threat_model == threat_model and metric in e.metrics
                  and e.directions.get(metric) in ("higher", "lower") and (not primary_only or e.primary == metric)]
    if not candidates:
        return None
    directions = {e.directions[metric] for e in candidates}
    if len(directions) > 1:
        raise ValueError(f"attacks of {threat_model} disagree on which way {metric} means more privacy")
    direction = directions.pop()
    value, attack = _attacker_best([(e.metrics[metric], e.attack) for e in candidates], direction)
    return value, attack, direction


# ---------------------------------------------------------------------------------------------- rows and experiments
@dataclass
class _Row:
    label: str
    setting: dict[str, Any]  # everything that must agree for records to be seeds of one row
    runs: list[_Run]

    @property
    def key(self) -> str:
        return json.dumps(self.setting, sort_keys=True, default=str)

    def values(self, read) -> list[float]:
        return [v for run in self.runs if (v := read(run)) is not None]

    def paper(self, key: str) -> Optional[float]:
        for run in self.runs:
            if (value := _finite(run.paper.get(key))) is not None:
                return value
        return None


@dataclass
class _Experiment:
    threat_model: str
    name: str
    named: bool  # from the records' `experiment`, not derived
    rows: list[_Row]
    families: list[_Family]
    attacks: dict[str, dict[str, Any]]  # attack -> {metrics, directions, primary, role, config}
    differences: list[str]  # per row, what tells it apart from rows of the same label

    @property
    def slug(self) -> str:
        """The plot's file name: threat model, then the experiment's name in plain characters."""
        return f"{_safe(self.threat_model)}__{re.sub('_+', '_', _safe(self.name)).strip('_')}"


def _setting(run: _Run, threat_model: Optional[str]) -> dict[str, Any]:
    setting: dict[str, Any] = {"network": run.method.get("network")}
    setting.update({f"model.{k}": v for k, v in _arguments(run.method).items()})
    setting.update({f"data.{k}": v for k, v in _arguments(run.record["config"].get("data")).items() if k != "seed"})
    setting.update({"dataset": run.record["dataset"]["name"], "epochs": run.budget, "world_size": run.world_size,
                    "effective_batch": run.effective_batch, "precision": run.precision})
    for attack, entry in sorted(run.entries_of(threat_model).items()):
        setting.update({f"{attack}.{k}": v for k, v in entry.config.items() if k not in _NOT_A_SETTING})
    return setting


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _derived_groups(runs: list[_Run], threat_model: Optional[str]) -> list[tuple[dict[str, str], list[_Run]]]:
    """Split runs of one (dataset, pools, budget, world, batch, precision) so that no attack runs with two configs.

    Methods may face different attacks (every attack that applies to each), but an attack they share
    must have run with one configuration; deterministic in the runs' (created, id) order.
    """
    groups: list[tuple[dict[str, str], list[_Run]]] = []
    for run in runs:
        configs = {a: _canonical({k: v for k, v in e.config.items() if k not in _NOT_A_SETTING})
                   for a, e in run.entries_of(threat_model).items() if e.adversary}
        for attacks, members in groups:
            if all(attacks.get(a, c) == c for a, c in configs.items()):
                attacks.update(configs)
                members.append(run)
                break
        else:
            groups.append((dict(configs), [run]))
    return groups


def _experiment_name(dataset: str, budget: Optional[tuple[str, int]], world: int, batch: Optional[int],
                     precision: str) -> str:
    parts = [dataset]
    if budget is not None:
        parts.append(_budget_text(budget))
    if batch is not None:
        parts.append(f"batch {batch}")
    if world != 1:
        parts.append(f"{world} devices")
    if precision != "32-true":
        parts.append(precision)
    return ", ".join(parts)


def _budget_text(budget: tuple[str, int]) -> str:
    kind, count = budget
    return f"{count} {kind if count != 1 else kind.rstrip('s')}"


def _distinguishing(attacks: dict[str, str], siblings: list[dict[str, str]]) -> str:
    """The attack settings of one experiment that its siblings (same data and budget) do not share."""
    flat = lambda configs: {f"{a}.{k}": _canonical(v) for a, c in configs.items() for k, v in json.loads(c).items()}  # noqa: E731
    mine, others = flat(attacks), [flat(s) for s in siblings]
    varying = sorted(k for k in mine if any(k in o and o[k] != mine[k] for o in others))  # shared, set differently
    text = ", ".join(f"{k}={mine[k]}" for k in varying)
    if not text or len(text) > 60:
        text = ("attacks " + ", ".join(sorted(attacks)))[:40] + f" [{_fingerprint(_canonical(attacks))}]"
    return text


def _fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _rows(runs: list[_Run], threat_model: Optional[str]) -> list[_Row]:
    keyed: dict[str, dict[Any, _Run]] = {}
    settings: dict[str, tuple[str, dict]] = {}
    for run in sorted(runs, key=lambda r: (str(r.record["created"]), str(r.record["record_id"]))):
        setting = _setting(run, threat_model)
        key = _canonical([run.method["label"], setting])
        settings[key] = (run.method["label"], setting)
        # one record per seed: a re-evaluation of the same run replaces the older record instead of posing as a seed
        seed = run.record.get("seed")
        identity = (seed, _mapping(run.record["dataset"]).get("seed")) if seed is not None else run.record["record_id"]
        keyed.setdefault(key, {})[_canonical(identity)] = run
    by_seed = lambda r: (not isinstance(r.record.get("seed"), int), r.record.get("seed") if isinstance(r.record.get("seed"), int) else 0,  # noqa: E731
                         str(r.record["record_id"]))
    rows = [_Row(settings[key][0], settings[key][1], sorted(found.values(), key=by_seed)) for key, found in keyed.items()]
    rows.sort(key=lambda row: (row.label, row.key))
    return rows


def _differences(rows: list[_Row]) -> list[str]:
    """Per row, the settings that tell it apart from rows with the same label ('' when the label says all)."""
    siblings: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        siblings.setdefault(row.label, []).append(index)
    differences = [""] * len(rows)
    for members in siblings.values():
        if len(members) < 2:
            continue
        varying = sorted({key for i in members for key in rows[i].setting
                          if len({_canonical(rows[j].setting.get(key)) for j in members}) > 1})
        for i in members:
            differences[i] = ", ".join(f"{key}={_canonical(rows[i].setting.get(key))}" for key in varying)
    return differences


def _attack_info(rows: list[_Row], threat_model: str) -> dict[str, dict[str, Any]]:
    attacks: dict[str, dict[str, Any]] = {}
    for row in rows:
        for run in row.runs:
            for attack, entry in run.entries_of(threat_model).items():
                info = attacks.setdefault(attack, {"metrics": [], "directions": {}, "primary": entry.primary,
                                                   "role": entry.role, "configs": set()})
                info["metrics"] += [m for m in sorted(entry.metrics) if m not in info["metrics"]]
                for metric, direction in entry.directions.items():
                    info["directions"].setdefault(metric, direction)
                info["configs"].add(_canonical({k: v for k, v in entry.config.items() if k not in _NOT_A_SETTING}))
    return dict(sorted(attacks.items()))


def _families(attacks: dict[str, dict[str, Any]]) -> list[_Family]:
    """The worst-case columns: one per (primary metric, direction) of the experiment's adversaries."""
    counts = Counter(_Family(info["primary"], info["directions"][info["primary"]]) for info in attacks.values()
                     if info["role"] != "diagnostic" and info["primary"] in info["directions"])
    return sorted(counts, key=lambda f: (-counts[f], f.metric, f.direction))


def _experiments(runs: list[_Run]) -> list[_Experiment]:
    named: dict[tuple[str, str], list[_Run]] = {}
    derived: dict[tuple, list[_Run]] = {}
    for run in runs:
        threat_models = sorted({e.threat_model for e in run.entries}) or [UTILITY_ONLY]
        for tm in threat_models:
            if run.experiment:
                named.setdefault((tm, run.experiment), []).append(run)
            else:
                key = (tm, run.record["dataset"]["name"], _canonical(run.record["dataset"].get("pool_sizes")),
                       run.budget, run.world_size, run.effective_batch, run.precision)
                derived.setdefault(key, []).append(run)
    experiments = []
    for (tm, name), members in named.items():
        experiments.append(_experiment(tm, name, True, members))
    pending = []
    for key, members in derived.items():
        tm = key[0]
        ordered = sorted(members, key=lambda r: (str(r.record["created"]), str(r.record["record_id"])))
        for attacks, group in _derived_groups(ordered, None if tm == UTILITY_ONLY else tm):
            pending.append((key, attacks, group))
    by_base: dict[tuple[str, str], list[int]] = {}
    for index, (key, _, _) in enumerate(pending):
        by_base.setdefault((key[0], _experiment_name(key[1], *key[3:])), []).append(index)
    for (tm, base), members in sorted(by_base.items()):
        names = {}
        for index in members:
            key, attacks, _ = pending[index]
            name = base
            if len({pending[j][0][2] for j in members}) > 1:  # same data and budget, other pool sizes
                pools = _mapping(json.loads(key[2]))
                name += f" · train {pools['train']}" if "train" in pools else f" · pools [{_fingerprint(key[2])}]"
            same_pools = [pending[j][1] for j in members if pending[j][0][2] == key[2]]
            if len(same_pools) > 1:  # and the attacks ran with other configurations: the settings that differ name it
                name += " · " + _distinguishing(attacks, same_pools)
            names[index] = name
        for index in members:
            key, attacks, group = pending[index]
            name = names[index]
            if list(names.values()).count(name) > 1:  # never two experiments under one name (or one plot file)
                name += f" [{_fingerprint(_canonical([key, attacks]))}]"
            experiments.append(_experiment(tm, name, False, group))
    experiments.sort(key=lambda e: (e.threat_model == UTILITY_ONLY, e.threat_model, not e.named, e.name))
    return experiments


def _experiment(threat_model: str, name: str, named: bool, runs: list[_Run]) -> _Experiment:
    tm = None if threat_model == UTILITY_ONLY else threat_model
    rows = _rows(runs, tm)
    attacks = _attack_info(rows, threat_model) if tm else {}
    return _Experiment(threat_model, name, named, rows, _families(attacks), attacks, _differences(rows))


# ---------------------------------------------------------------------------------------------- numbers
def _number(value: float, count: bool = False) -> str:
    if count or abs(value) >= 999.5:  # .3g would switch to 1e+03 notation from here on
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:#.3g}".rstrip(".")  # '#' keeps trailing zeros, so a column lines up (0.980, not 0.98)


def _spread(std: float, mean_text: str) -> str:
    """The std to the precision the mean is shown with, which is all that precision supports."""
    if "e" in mean_text:
        return f"{std:.1e}"
    decimals = len(mean_text.split(".")[1]) if "." in mean_text else 0
    return f"{std:,.{decimals}f}"


def _summary(values: Sequence[float], count: bool = False, exact: bool = False) -> str:
    """Mean ± sample std; ``count``: a size (thousands separators); ``exact``: no spread when seeds agree."""
    if not values:
        return MISSING
    text = _number(float(np.mean(values)), count)
    if len(values) > 1:
        std = float(np.std(values, ddof=1))
        if not ((count or exact) and std == 0):
            text += f" ± {_spread(std, text)}"
    return text


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def _std(values: Sequence[float]) -> Optional[float]:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


@dataclass
class _WorstCase:
    values: list[float]
    attacks: Counter
    converged: bool  # False when an adversary of this column stopped at its maximum budget without converging
    interval: Optional[tuple[float, float]]  # the record's own interval, for a single seed

    @property
    def attack(self) -> str:
        """The attack that was strongest in most seeds (ties: the first by name)."""
        return min(self.attacks.items(), key=lambda item: (-item[1], item[0]))[0]


def _row_worst_case(row: _Row, threat_model: str, family: _Family) -> Optional[_WorstCase]:
    values, attacks, converged, interval = [], Counter(), True, None
    for run in row.runs:
        entries = list(run.entries_of(threat_model).values())
        try:
            found = worst_case(entries, threat_model, family.metric)
        except ValueError:
            found = None
        if found is None or found[2] != family.direction:
            continue
        value, attack, _ = found
        values.append(value)
        attacks[attack] += 1
        interval = run.entries_of(threat_model)[attack].intervals.get(family.metric)
        # an adversary that stopped short might have won with more budget: the verdict is then optimistic
        converged &= all(e.converged is not False for e in entries if e.adversary and e.primary == family.metric)
    if not values:
        return None
    return _WorstCase(values, attacks, converged, interval if len(values) == 1 else None)


def _attack_names(worst: _WorstCase) -> str:
    if len(worst.attacks) == 1:
        return worst.attack
    total = sum(worst.attacks.values())  # seeds disagree on the strongest attack: say how often each won
    return ", ".join(f"{a} {n}/{total}" for a, n in sorted(worst.attacks.items(), key=lambda item: (-item[1], item[0])))


def _worst_case_cell(worst: Optional[_WorstCase], best: bool) -> str:
    if worst is None:
        return MISSING
    text = _summary(worst.values)
    if worst.interval is not None:
        text += f" [{_number(worst.interval[0])}, {_number(worst.interval[1])}]"
    if best:
        text = f"**{text}**"
    return f"{text} {_attack_names(worst)}" + ("" if worst.converged else f" {NOT_CONVERGED}")


def _is_best(means: dict[int, float], index: int, higher: bool) -> bool:
    if index not in means or len(means) < 2:
        return False
    target = (max if higher else min)(means.values())
    # seeds averaged in a different order may differ in the last bit: that is still a tie
    return math.isclose(means[index], target, rel_tol=1e-9, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------- tables
def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _clip_to(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 1] + "…"


def _markdown_table(headers: list[str], rows: list[list[str]], left: int = 1, clip: bool = True) -> list[str]:
    assert len(headers) <= MAX_TABLE_COLUMNS, headers  # callers split wider tables
    lines = ["| " + " | ".join(_escape(h) for h in headers) + " |",
             "|" + "|".join([":---"] * left + ["---:"] * (len(headers) - left)) + "|"]
    lines += ["| " + " | ".join(_escape(_clip(cell) if clip else cell) for cell in row) + " |" for row in rows]
    return lines


def _utility_key(experiment: _Experiment) -> Optional[str]:
    keys = sorted({k for row in experiment.rows for run in row.runs for k in run.utility})
    return PRIMARY_UTILITY if PRIMARY_UTILITY in keys else (keys[0] if keys else None)


@dataclass(frozen=True)
class _CostColumn:
    key: str
    header: str
    count: bool


def _cost_columns(experiment: _Experiment) -> list[_CostColumn]:
    runs = [run for row in experiment.rows for run in row.runs]
    columns = []
    if any(_RELEASED in run.cost for run in runs):
        columns.append(_CostColumn(_RELEASED, "Released B/sample", True))
    if any(_PARAMETERS in run.cost for run in runs):
        columns.append(_CostColumn(_PARAMETERS, "Params", True))
    if any(run.cost.get(_COMPRESSION, 1.0) > 1.0 for run in runs):  # pruned or otherwise sparse models
        columns.append(_CostColumn(_COMPRESSION, "Compression (×)", False))
    shown = {c.key for c in columns} | {_NONZERO}
    # what methods declare (method.headline_cost), then cost entries the paper reports for the run
    declared = list(dict.fromkeys(k for run in runs for k in run.headline_cost))
    declared += sorted({k for run in runs for k in run.paper if k in run.cost} - set(declared))
    columns += [_CostColumn(key, key, False) for key in declared if key not in shown and any(key in r.cost for r in runs)]
    return columns


def _headline(experiment: _Experiment, front: set[int]) -> list[str]:
    utility = _utility_key(experiment)
    costs = _cost_columns(experiment)
    has_setting = any(experiment.differences)
    families = experiment.families[:MAX_TABLE_COLUMNS - 4]  # beyond that (not seen yet): in the detail and the CSV
    fixed = 1 + has_setting + (utility is not None) + len(families) + 1  # method, setting, utility, worst, seeds
    costs = costs[:max(0, MAX_TABLE_COLUMNS - fixed)]  # the rest is in the CSV
    headers = ["Method"] + (["Setting"] if has_setting else []) + ([utility.capitalize()] if utility else [])
    headers += [f"Worst-case {f.metric} {f.arrow}" for f in families]
    headers += [c.header for c in costs] + ["Seeds"]
    utility_means = {i: m for i, row in enumerate(experiment.rows)
                     if (m := _mean(row.values(lambda r: r.utility.get(utility)))) is not None} if utility else {}
    worst = {f: [_row_worst_case(row, experiment.threat_model, f) for row in experiment.rows] for f in families}
    worst_means = {f: {i: float(np.mean(w.values)) for i, w in enumerate(cells) if w is not None} for f, cells in worst.items()}
    body = []
    for i, row in enumerate(experiment.rows):
        degenerate = " (degenerate)" if any(_degenerate(run.record) for run in row.runs) else ""
        cells = [row.label + degenerate + (f" {PARETO}" if i in front else "")]
        if has_setting:
            cells.append(experiment.differences[i] or MISSING)
        if utility:
            text = _summary(row.values(lambda r: r.utility.get(utility)))
            if _is_best(utility_means, i, True):
                text = f"**{text}**"
            paper = row.paper(utility)
            cells.append(text if paper is None else f"{text} (paper {_number(paper)})")
        for family in families:
            cells.append(_worst_case_cell(worst[family][i], _is_best(worst_means[family], i, family.direction == "higher")))
        for column in costs:
            text = _summary(row.values(lambda r, k=column.key: r.cost.get(k)), column.count, exact=True)
            paper = row.paper(column.key)
            cells.append(text if paper is None else f"{text} (paper {_number(paper)})")
        cells.append(str(len(row.runs)))
        body.append(cells)
    return _markdown_table(headers, body, left=1 + has_setting)


def _attack_tables(experiment: _Experiment, attack: str, info: dict[str, Any]) -> list[str]:
    """One attack's metrics per row, split into tables of at most MAX_TABLE_COLUMNS columns."""
    rows = [(i, row) for i, row in enumerate(experiment.rows)
            if any(attack in run.entries_of(experiment.threat_model) for run in row.runs)]
    metrics = [m for m in info["metrics"]]
    if info["primary"] in metrics:  # the primary metric first
        metrics.remove(info["primary"])
        metrics.insert(0, info["primary"])
    has_setting = any(experiment.differences[i] for i, _ in rows)
    fixed = 2 + has_setting
    per_table = MAX_TABLE_COLUMNS - fixed
    lines = []
    for start in range(0, len(metrics), per_table):
        chunk = metrics[start:start + per_table]
        headers = ["Method"] + (["Setting"] if has_setting else []) + [
            f"{m} {'↑' if info['directions'].get(m) == 'higher' else '↓' if info['directions'].get(m) == 'lower' else ''}".strip()
            for m in chunk] + ["Seeds"]
        body = []
        for i, row in rows:
            entries = [run.entries_of(experiment.threat_model)[attack] for run in row.runs
                       if attack in run.entries_of(experiment.threat_model)]
            flag = "" if all(e.converged is not False for e in entries) else f" {NOT_CONVERGED}"
            cells = [row.label + flag] + ([experiment.differences[i] or MISSING] if has_setting else [])
            for metric in chunk:
                values = [e.metrics[metric] for e in entries if metric in e.metrics]
                text = _summary(values)
                if len(values) == 1 and metric in entries[0].intervals:
                    low, high = entries[0].intervals[metric]
                    text += f" [{_number(low)}, {_number(high)}]"
                paper = row.paper(f"{attack}.{metric}")
                cells.append(text if paper is None else f"{text} (paper {_number(paper)})")
            cells.append(str(len(entries)))
            body.append(cells)
        lines += _markdown_table(headers, body, left=1 + has_setting) + [""]
    return lines


def _config_text(info: dict[str, Any]) -> str:
    configs = sorted(info["configs"])
    if len(configs) == 1:
        config = json.loads(configs[0])
        return ", ".join(f"{k}={_canonical(v)}" for k, v in sorted(config.items())) or "defaults"
    return f"{len(configs)} configurations (rows differ: see Setting)"


def _provenance(experiment: _Experiment) -> list[str]:
    revisions = sorted({run.revision[:7] + ("+dirty" if run.revision.endswith("+dirty") else "")
                        for row in experiment.rows for run in row.runs if run.revision})
    configs = sorted({name for row in experiment.rows for run in row.runs for name in run.configs})
    lines = []
    if configs:
        lines.append("Produced by `bench fit --config NAME` with " + ", ".join(f"`{c}`" for c in configs) + ".")
    lines.append("Revision" + ("s: " if len(revisions) > 1 else ": ") + (", ".join(f"`{r}`" for r in revisions) or "not recorded") + ".")
    return lines


def _details(experiment: _Experiment) -> list[str]:
    lines = ["<details><summary>Per-attack detail, diagnostics and provenance</summary>", ""]
    adversaries = {a: i for a, i in experiment.attacks.items() if i["role"] != "diagnostic"}
    diagnostics = {a: i for a, i in experiment.attacks.items() if i["role"] == "diagnostic"}
    for title, attacks in (("Adversaries", adversaries), ("Diagnostics (the method's own parts; never the verdict)", diagnostics)):
        if not attacks:
            continue
        lines += [f"**{title}**", ""]
        for attack, info in attacks.items():
            primary = f" (primary metric: {info['primary']})" if info["primary"] else ""
            lines += [f"*{attack}*{primary}: {_escape(_config_text(info))}", ""]
            lines += _attack_tables(experiment, attack, info)
    settings = [(row.label, experiment.differences[i]) for i, row in enumerate(experiment.rows)
                if len(experiment.differences[i]) > MAX_CELL_CHARS]
    if settings:
        lines += ["Settings in full:", ""] + [f"- {_escape(label)}: `{text}`" for label, text in settings] + [""]
    sources = sorted({src for row in experiment.rows for run in row.runs if isinstance(src := run.paper.get("source"), str)})
    if sources:
        lines += ["Paper values from: " + "; ".join(_escape(s) for s in sources) + ".", ""]
    lines += _provenance(experiment) + ["", "</details>", ""]
    return lines


def _experiment_intro(experiment: _Experiment) -> str:
    pools = {_canonical(run.record["dataset"].get("pool_sizes")) for row in experiment.rows for run in row.runs}
    pool_text = ""
    if len(pools) == 1 and isinstance(sizes := json.loads(pools.pop()), dict) and sizes:
        pool_text = " Pools: " + ", ".join(f"{k} {_number(float(v), True)}" for k, v in sizes.items()
                                          if isinstance(v, (int, float))) + "."
    if experiment.named:
        return f"Experiment `{experiment.name}`, as the records name it.{pool_text}"
    if experiment.threat_model == UTILITY_ONLY:
        return f"Same data, training budget, batch, devices and precision.{pool_text}"
    return f"Same data, training budget, batch, devices and precision; each attack with one configuration.{pool_text}"


def _notes(experiment: _Experiment) -> list[str]:
    notes = []
    flagged = sorted({e.attack for row in experiment.rows for run in row.runs
                      for e in run.entries_of(experiment.threat_model).values() if e.converged is False})
    if flagged:
        notes.append(f"{NOT_CONVERGED} stopped at its maximum budget without converging (its result is a lower bound on "
                     f"what this attacker can do): {', '.join(flagged)}.")
    if any(run.paper for row in experiment.rows for run in row.runs):
        notes.append("Paper values in parentheses (sources under the detail).")
    return notes


# ---------------------------------------------------------------------------------------------- plots
def _front(experiment: _Experiment) -> set[int]:
    """Rows on the Pareto front of utility vs the first worst-case column."""
    utility = _utility_key(experiment)
    if utility is None or not experiment.families:
        return set()
    family = experiment.families[0]
    points, indices = [], []
    for i, row in enumerate(experiment.rows):
        x = _mean(row.values(lambda r: r.utility.get(utility)))
        w = _row_worst_case(row, experiment.threat_model, family)
        if x is not None and w is not None:
            points.append((x, float(np.mean(w.values))))
            indices.append(i)
    if len(points) < 2:
        return set()
    return {indices[i] for i in pareto_front(points, True, family.direction == "higher")}


def _plot(experiment: _Experiment) -> Optional[bytes]:
    """Utility against each worst-case column, one point per row with seed error bars, the Pareto front drawn."""
    # Figure + the Agg canvas directly, not pyplot: no global backend switch for whoever imported us,
    # and no pyplot figure registry to leak figures into when called again and again
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatter, ScalarFormatter

    utility = _utility_key(experiment)
    if utility is None or not experiment.families:
        return None
    # one legend entry per row: the label, and what tells rows of the same label apart
    names_of = {id(row): row.label if not experiment.differences[i] else _clip_to(f"{row.label} ({experiment.differences[i]})", 48)
                for i, row in enumerate(experiment.rows)}
    panels = []
    for family in experiment.families:
        points = []
        for row in experiment.rows:
            xs = row.values(lambda r: r.utility.get(utility))
            worst = _row_worst_case(row, experiment.threat_model, family)
            if xs and worst is not None:
                y = float(np.mean(worst.values))
                # error bars: the std over seeds, or a single seed's own interval
                spread = ([[y - worst.interval[0]], [worst.interval[1] - y]] if worst.interval is not None
                          else _std(worst.values) or 0.0)
                points.append((row, float(np.mean(xs)), _std(xs) or 0.0, y, spread))
        if points:
            panels.append((family, points))
    if not panels:
        return None
    labels = list(dict.fromkeys(names_of[id(row)] for _, points in panels for row, *_ in points))
    method_of = {names_of[id(row)]: row.runs[0].method["name"] for _, points in panels for row, *_ in points}
    names = sorted(set(method_of.values()))
    palette, markers = colormaps["tab10"], "osD^v<>ph*P"
    style = {}
    if len(labels) <= 10:  # few rows: a colour each, the marker says the method
        for k, label in enumerate(labels):
            style[label] = (palette(k), markers[names.index(method_of[label]) % len(markers)])
    else:  # one colour per method, one marker per setting within it
        for name in names:
            mine = [label for label in labels if method_of[label] == name]
            for k, label in enumerate(mine):
                style[label] = (palette(names.index(name) % 10), markers[k % len(markers)])
    legend_inches = 0.8 + 0.065 * max(len(label) for label in labels + ["Pareto front"])  # 8 pt text beside the axes
    figure = Figure(figsize=(5.2 * len(panels) + legend_inches, 4.6))
    drew_front = False
    FigureCanvasAgg(figure)
    for p, (family, points) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), p + 1)
        for row, x, sx, y, sy in points:
            color, marker = style[names_of[id(row)]]
            axes.errorbar(x, y, xerr=sx or None, yerr=sy if isinstance(sy, list) else sy or None, fmt=marker, color=color, markersize=7, capsize=3,
                          elinewidth=1, zorder=3)
        front = pareto_front([(x, y) for _, x, _, y, _ in points], True, family.direction == "higher")
        if len(points) > 1 and front:
            drew_front = True
            xy = sorted((points[i][1], points[i][3]) for i in front)
            axes.plot(*zip(*xy), color="0.35", linestyle="--", linewidth=1.2, zorder=2)
            axes.scatter(*zip(*xy), s=190, facecolors="none", edgecolors="0.35", linewidths=1.2, zorder=2)
        ys = [y for *_, y, _ in points]
        if min(ys) > 0 and max(ys) / min(ys) > 10:  # the metric spans decades
            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(ScalarFormatter())
            axes.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        if family.direction == "lower":
            axes.invert_yaxis()  # up is always more private
        attacks = sorted({a for row, *_ in points if (w := _row_worst_case(row, experiment.threat_model, family))
                          for a in w.attacks})
        axes.set_xlabel(f"{utility} (→ better)")
        axes.set_ylabel(f"worst-case {family.metric} (↑ more private)")
        axes.set_title(f"strongest of: {', '.join(attacks)}" if len(", ".join(attacks)) < 60 else
                       f"strongest of {len(attacks)} adversaries", fontsize=9)
        axes.grid(True, alpha=0.3)
        axes.margins(x=0.08, y=0.1)
    handles = [Line2D([], [], linestyle="none", marker=style[label][1], color=style[label][0], markersize=7, label=label)
               for label in labels]
    if drew_front:
        handles.append(Line2D([], [], color="0.35", linestyle="--", marker="o", markerfacecolor="none", markersize=11,
                              label="Pareto front"))
    figure.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    figure.suptitle(f"{experiment.name} ({experiment.threat_model})", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - legend_inches / figure.get_figwidth(), 1))
    figure.savefig(buffer := io.BytesIO(), format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- claims
def _claim_settings(runs: list[_Run], placed: dict[int, set[str]]) -> list[Setting]:
    """Rows as the claims select them: one per (label, setting) over every experiment, with the tables they sit in."""
    grouped: dict[str, list[_Run]] = {}
    for run in runs:
        threat_models = sorted({e.threat_model for e in run.entries})
        key = _canonical([run.method["label"], run.experiment, {tm: _setting(run, tm) for tm in threat_models}
                          or _setting(run, None)])
        grouped.setdefault(key, []).append(run)
    settings = []
    for key in sorted(grouped):
        members = grouped[key]
        first = members[0]
        seeds: dict[str, _Run] = {}
        for run in sorted(members, key=lambda r: (str(r.record["created"]), str(r.record["record_id"]))):
            seed = run.record.get("seed")
            seeds[_canonical((seed, run.record["dataset"].get("seed")) if seed is not None else run.record["record_id"])] = run
        settings.append(Setting(first.method["name"], first.method["label"], first.record["dataset"]["name"],
                                first.experiment or "", _mapping(first.method.get("hparams")),
                                tuple(run.record for run in seeds.values()), _scale(first),
                                frozenset().union(*(placed.get(id(run), set()) for run in members))))
    return settings


def _scale(run: _Run) -> str:
    """What a run trained on and for how long, e.g. 'mnist_t10k (4,000 train, 8 epochs)'."""
    train = _finite(_mapping(run.record["dataset"].get("pool_sizes")).get("train"))
    parts = ([f"{_number(train, True)} train"] if train is not None else []) + (
        [_budget_text(run.budget)] if run.budget else [])
    return run.record["dataset"]["name"] + (f" ({', '.join(parts)})" if parts else "")


def _claim_value(record: dict, path: str) -> Optional[float]:
    section, _, rest = path.partition(".")
    if section in ("utility", "cost"):
        return _finite(_mapping(record.get(section)).get(rest))
    attack_or_tm, _, metric = rest.partition(".")
    entries = [_entry(raw) for raw in record["privacy"] if isinstance(raw, dict)]
    if section == "privacy":
        entry = next((e for e in entries if e.attack == attack_or_tm), None)
        return None if entry is None else entry.metrics.get(metric)
    try:
        found = worst_case(entries, attack_or_tm, metric, primary_only=False)
    except ValueError:
        return None
    return None if found is None else found[0]


def _scorecard(claims_files: list, runs: list[_Run], placed: Optional[dict[int, set[str]]] = None) -> list[str]:
    if not claims_files:
        return []
    lines = ["## Scorecard: the papers' claims, as our records measure them", "",
             "Each claim is a comparison of record values stated in `bench/claims/<paper>.yaml`; *ours* shows the "
             "values compared (mean over seeds). *Not run at this scale*: no record measures it yet.", ""]
    for file, verdicts in evaluate_claims(claims_files, _claim_settings(runs, placed or {}), _claim_value):
        counts = Counter(v.status for v in verdicts)
        summary = ", ".join(f"{counts[s]} {s}" for s in ("yes", "partly", "no", "not run at this scale") if counts[s])
        scales = sorted({scale for v in verdicts for scale in v.scales})
        measured = f" Ours measured on {'; '.join(scales)}." if scales else ""
        lines += [f"### {file.paper}", "", f"{len(verdicts)} claims: {summary}.{measured}", ""]
        body = [[v.claim.claim + (f" ({v.claim.note})" if v.claim.note else ""), v.claim.paper, v.ours or MISSING,
                 f"**{v.status}**" if v.status in ("yes", "no") else v.status] for v in verdicts]
        lines += _markdown_table(["Claim", "Paper", "Ours", "Reproduced?"], body, left=4, clip=False) + [""]
    return lines


# ---------------------------------------------------------------------------------------------- files
def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _write_atomic(path: Path, data: bytes) -> None:
    # Records may finish at the same time and each regenerates the leaderboard: a reader (or a
    # concurrent writer) must only ever see a whole file
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _csv(experiments: list[_Experiment]) -> bytes:
    """Long enough to hold everything: one line per row, every utility, worst-case, attack metric and cost."""
    columns: dict[str, None] = {}
    lines = []
    for experiment in experiments:
        for i, row in enumerate(experiment.rows):
            line: dict[str, Any] = {"threat_model": experiment.threat_model, "experiment": experiment.name,
                                    "dataset": _text(row.setting.get("dataset")), "method": row.label, "network": _text(row.setting.get("network")),
                                    "seeds": len(row.runs), "setting": row.key}
            budget = row.setting.get("epochs")
            line["epochs"] = budget[1] if budget and budget[0] == "epochs" else ""
            line["max_steps"] = budget[1] if budget and budget[0] == "steps" else ""
            values: dict[str, list[float]] = {}
            for run in row.runs:
                for key, value in run.utility.items():
                    values.setdefault(f"utility.{key}", []).append(value)
                for entry in run.entries_of(experiment.threat_model).values():
                    for metric, value in entry.metrics.items():
                        values.setdefault(f"{entry.attack}.{metric}", []).append(value)
                for key, value in run.cost.items():
                    values.setdefault(f"cost.{key}", []).append(value)
            for family in experiment.families:
                worst = _row_worst_case(row, experiment.threat_model, family)
                if worst is not None:
                    values[f"worst_case.{family.metric}"] = worst.values
                    line[f"worst_case.{family.metric}_attack"] = _attack_names(worst)
                    columns[f"worst_case.{family.metric}_attack"] = None
            for key, found in sorted(values.items()):
                line[f"{key}_mean"] = float(np.mean(found))
                line[f"{key}_std"] = _std(found) if len(found) > 1 else ""
                columns[f"{key}_mean"] = columns[f"{key}_std"] = None
            lines.append(line)
    base = ["threat_model", "experiment", "dataset", "method", "network", "epochs", "max_steps", "seeds"]
    ordered = sorted(columns, key=lambda c: (not c.startswith("utility."), not c.startswith("worst_case."),
                                             c.startswith("cost."), c))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, base + ordered + ["setting"], restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return buffer.getvalue().encode()


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else _canonical(value)


def _shown_path(path: Path, locations: list[Path], out_dir: Path) -> str:
    """A problem file's path without machine-specific prefixes, so the README stays reproducible."""
    for base, prefix in [(out_dir, None)] + [(loc, loc.name) for loc in locations if loc.is_dir()]:
        try:
            relative = path.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        return str(Path(prefix, relative) if prefix else relative)
    return path.name


def generate_leaderboard(record_locations: Sequence[str | Path], out_dir: str | Path, title: str = "bench leaderboard",
                         claims: Optional[Sequence[str | Path]] = None, include_degenerate: bool = False) -> LeaderboardResult:
    """Read the records under ``record_locations``; write README.md, leaderboard.csv and plots/ into ``out_dir``.

    ``claims``: claims files for the scorecard (None: the ones bench ships; [] for none).
    ``include_degenerate``: also rank runs flagged degenerate (at chance accuracy).
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    locations = [Path(location) for location in record_locations]
    loaded = load_records(locations)
    problems = list(loaded.problems)
    runs, left_out = [], []
    for record, path in zip(loaded.records, loaded.paths):
        try:
            run = _read(record, path)
        except (KeyError, TypeError, ValueError, AttributeError) as error:  # one bad record never breaks the board
            problems.append((path, f"unusable record: {error}"))
            continue
        if _degenerate(record) and not include_degenerate:
            left_out.append((path, f"{record['method']['label']}: flagged degenerate (accuracy at chance)"))
            continue
        runs.append(run)
    claims_files = []
    for claims_path in (shipped_claims() if claims is None else [Path(c) for c in claims]):
        try:
            claims_files.append(load_claims(claims_path))
        except ClaimsError as error:
            problems.append((Path(claims_path), str(error)))
    experiments = _experiments(runs)
    count = len(loaded.records)
    remarks = ([f"{len(problems)} skipped (see the end)"] if problems else []) + (
        [f"{len(left_out)} degenerate run{'s' if len(left_out) != 1 else ''} left out"] if left_out else [])
    lines = [f"# {title}", "", f"Generated by `bench leaderboard` from {count} record{'s' if count != 1 else ''}"
             + (": " + ", ".join(remarks) if remarks else "") + ".", ""]
    # which experiments (tables) each run sits in: a claim compares numbers from one experiment where it can
    placed: dict[int, set[str]] = {}
    for experiment in experiments:
        for row in experiment.rows:
            for run in row.runs:
                placed.setdefault(id(run), set()).add(f"{experiment.threat_model}: {experiment.name}")
    lines += _scorecard(claims_files, runs, placed)
    if any(e.families for e in experiments):
        lines += ["How to read the tables: one table per experiment (rows that may be ranked against each other). "
                  "*Worst-case*: the best any adversary of the threat model achieved on the attacks' primary metric "
                  "(diagnostics never count), taken per seed and then averaged (mean ± std over seeds; [low, high]: "
                  f"the record's interval for a single seed), with the attack that achieved it. ↑/↓: higher/lower is "
                  f"more private. {PARETO}: on the privacy-utility Pareto front. Bold: the best in its column. "
                  f"{NOT_CONVERGED}: the attack stopped at its maximum budget without converging. Per-attack "
                  "results, diagnostics and the configs that produced each experiment are under its detail.", ""]
    if not experiments:
        lines += ["No records yet. Train and evaluate a method with `bench fit` (see `bench fit --help`): each "
                  "evaluation writes one JSON record; then run `bench leaderboard` again.", ""]
    plots = []
    for threat_model, group in itertools.groupby(experiments, key=lambda e: e.threat_model):
        group = list(group)
        lines += [f"## {_THREAT_MODEL_TITLES.get(threat_model, threat_model)}", ""]
        if threat_model in {t.value for t in ThreatModel}:
            lines += [f"Threat model: {ThreatModel(threat_model).description}.", ""]
        for experiment in group:
            lines += [f"### {experiment.name}", "", _experiment_intro(experiment), ""]
            front = _front(experiment)
            lines += _headline(experiment, front) + [""]
            lines += [line for note in _notes(experiment) for line in (note, "")]
            png = _plot(experiment)
            if png is not None:
                name = f"{experiment.slug}.png"
                _write_atomic(plots_dir / name, png)
                plots.append(plots_dir / name)
                lines += [f"![worst-case privacy against utility: {experiment.name}](plots/{name})", ""]
            if experiment.attacks or any(run.configs or run.revision for row in experiment.rows for run in row.runs):
                lines += _details(experiment)
    for stale in plots_dir.glob("*.png"):  # plots of experiments that no longer exist
        if stale not in plots:
            stale.unlink()
    if left_out:
        lines += ["## Left out", "", "Runs flagged degenerate are not ranked (`bench leaderboard --include_degenerate` shows them):", ""]
        lines += [f"- `{_shown_path(path, locations, out_dir)}`: {reason}" for path, reason in left_out] + [""]
    if problems:
        lines += ["## Skipped", ""]
        lines += [f"- `{_shown_path(path, locations, out_dir)}`: {reason}" for path, reason in problems] + [""]
    markdown, table = out_dir / "README.md", out_dir / "leaderboard.csv"
    _write_atomic(markdown, "\n".join(lines).rstrip("\n").encode() + b"\n")
    _write_atomic(table, _csv(experiments))
    return LeaderboardResult(markdown, table, plots, problems, sum(len(e.rows) for e in experiments), left_out)
