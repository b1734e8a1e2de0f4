"""Worst-case privacy, rows (one setting, its seeds) and experiments (rows that may be ranked together)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from bench.leaderboard.records import _NOT_A_SETTING, UTILITY_ONLY, _Entry, _finite, _mapping, _Run, _safe, _settings_of


@dataclass(frozen=True)
class _Family:
    """Attacks compared on one metric, in one direction (which way means more privacy)."""

    metric: str
    direction: str  # "higher" or "lower": more private
    #: the worst case over the adversaries whose primary metric it is (False: over every adversary reporting it)
    primary_only: bool = True

    @property
    def arrow(self) -> str:
        return "↑" if self.direction == "higher" else "↓"


#: canary metrics the headline adds beside the primary metric's worst case: TPR at 0.1% FPR, the one-run audit bound
CANARY_HEADLINE = ("canary_tpr_at_0.1pct_fpr", "canary_audit_epsilon")


def _attacker_best(values: Sequence[tuple[float, str]], direction: str) -> tuple[float, str]:
    """The least private value (the attacker's best): the minimum of a "higher is more private" metric."""
    pick = min if direction == "higher" else max
    best = pick(value for value, _ in values)
    return best, min(attack for value, attack in values if value == best)  # ties: the first attack by name


#: metrics the headline shows beside every reconstruction attack's primary one: a mean hides a defense that leaves
#: half the images intact; the share of reconstructions identified among distractors does not
BESIDE_THE_HEADLINE = ("identification_rate",)


def worst_case(
    entries: Sequence[_Entry], threat_model: str, metric: str, primary_only: bool = True
) -> Optional[tuple[float, str, str]]:
    """(value, attack, direction) of the strongest adversary of ``threat_model`` on ``metric``, or None.

    ``primary_only``: only attacks whose primary metric is ``metric`` (the headline); otherwise every
    adversary that reports it (the claims). Raises ValueError when attacks disagree on its direction.
    """
    candidates = [
        e
        for e in entries
        if e.adversary
        and e.threat_model == threat_model
        and metric in e.metrics
        and e.directions.get(metric) in ("higher", "lower")
        and (not primary_only or e.primary == metric or metric in BESIDE_THE_HEADLINE)
    ]
    if not candidates:
        return None
    directions = {e.directions[metric] for e in candidates}
    if len(directions) > 1:
        raise ValueError(f"attacks of {threat_model} disagree on which way {metric} means more privacy")
    direction = directions.pop()
    value, attack = _attacker_best([(e.metrics[metric], e.attack) for e in candidates], direction)
    return value, attack, direction


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
        """The paper's number for ``key`` beside this row's: only where the row is at the paper's operating point,
        except for the operating point's own keys (a DP-SGD row at epsilon 1 shows "1.00 (paper 6.28)", never its
        accuracy beside the paper's accuracy at 6.28)."""
        for run in self.runs:
            if (value := _finite(run.paper.get(key))) is not None and (key in run.cost or _at_paper_point(run)):
                return value
        return None


#: how far (relatively) a row's own value of a cost the paper also states (dp_epsilon, compression_ratio) may lie from
#: the paper's for the row to be at the paper's operating point
PAPER_POINT_TOLERANCE = 0.05


def _at_paper_point(run: _Run) -> bool:
    """Whether every cost the paper states for the run (its operating point) is within the tolerance of the run's."""
    for key, stated in run.paper.items():
        ours, theirs = _finite(run.cost.get(key)), _finite(stated)
        if ours is not None and theirs is not None and abs(ours - theirs) > PAPER_POINT_TOLERANCE * abs(theirs):
            return False
    return True


@dataclass
class _Experiment:
    threat_model: str
    name: str
    named: bool  # from the records' `experiment`, not derived
    rows: list[_Row]
    families: list[_Family]
    attacks: dict[str, dict[str, Any]]  # attack -> {metrics, directions, primary, role, config}
    differences: list[str]  # per row, what tells it apart from rows of the same label
    #: experiments that differ only in their attacks' settings share this (same data, pools, budget, batch, devices,
    #: precision) and one plot; None for an experiment named by its records
    siblings_key: Optional[str] = None
    #: what tells its attacks from its siblings' ('' without siblings)
    attack_settings: str = ""

    @property
    def slug(self) -> str:
        """The plot's file name: threat model, then the experiment's name in plain characters."""
        return f"{_safe(self.threat_model)}__{re.sub('_+', '_', _safe(self.name)).strip('_')}"


def _setting(run: _Run, threat_model: Optional[str]) -> dict[str, Any]:
    setting: dict[str, Any] = {"network": run.method.network}
    setting.update({f"model.{k}": v for k, v in _settings_of(run.method.hparams).items()})
    setting.update({f"data.{k}": v for k, v in run.data_settings.items() if k != "seed"})
    setting.update(
        {
            "dataset": run.dataset.name,
            "epochs": run.budget,
            "world_size": run.world_size,
            "effective_batch": run.effective_batch,
            "precision": run.precision,
        }
    )
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
        configs = {
            a: _canonical({k: v for k, v in e.config.items() if k not in _NOT_A_SETTING})
            for a, e in run.entries_of(threat_model).items()
            if e.adversary
        }
        for attacks, members in groups:
            if all(attacks.get(a, c) == c for a, c in configs.items()):
                attacks.update(configs)
                members.append(run)
                break
        else:
            groups.append((dict(configs), [run]))
    return groups


def _experiment_name(
    dataset: str, budget: Optional[tuple[str, int]], world: int, batch: Optional[int], precision: str
) -> str:
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


def _flat_settings(attacks: dict[str, str]) -> dict[tuple[str, str], str]:
    """(attack, setting) -> value as text, with (attack, "") -> "" for each attack that ran."""
    flat: dict[tuple[str, str], str] = {}
    for attack, config in attacks.items():
        flat[(attack, "")] = ""
        flat.update({(attack, k): _value_text(v) for k, v in json.loads(config).items()})
    return flat


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)


def _settings_text(features: list[tuple[str, str]], mine: dict[tuple[str, str], str]) -> str:
    """'feature_inversion (decoder=mirror, epochs=40) + own_decoder': per attack, the settings shown."""
    parts = []
    for attack in sorted({a for a, _ in features}):
        settings = [
            f"{k}={mine[(attack, k)]}" if (attack, k) in mine else f"{k} unset"
            for a, k in sorted(features)
            if a == attack and k
        ]
        ran = (attack, "") in mine
        parts.append(("" if ran else "without ") + attack + (f" ({', '.join(settings)})" if settings and ran else ""))
    return " + ".join(parts)


#: an experiment's name says at most this much about its attacks (past it: only what tells it from each sibling)
MAX_DISTINGUISHING_CHARS = 90


def _distinguishing(attacks: dict[str, str], siblings: list[dict[str, str]]) -> str:
    """What tells one experiment's attack settings from its siblings' (same data, pools and budget).

    Every setting of ours that some sibling sets otherwise, and every attack of ours that some sibling lacks;
    when that is long, the fewest of them (greedy) that still tell us from each sibling, unset ones included.
    """
    mine, others = _flat_settings(attacks), [_flat_settings(s) for s in siblings]
    missing = object()

    def separates(feature: tuple[str, str], other: dict) -> bool:
        return mine.get(feature, missing) != other.get(feature, missing)

    def set_otherwise(feature: tuple[str, str], other: dict) -> bool:
        """A setting of ours that ``other`` sets differently (or leaves unset) on an attack it ran too."""
        return separates(feature, other) and (not feature[1] or (feature[0], "") in other)

    shown = sorted(f for f in mine if any(set_otherwise(f, o) for o in others))
    # an attack's own presence needs no mention where one of its settings is shown
    shown = [f for f in shown if f[1] or not any(a == f[0] and k for a, k in shown)]
    text = _settings_text(shown, mine)
    if text and len(text) <= MAX_DISTINGUISHING_CHARS:
        return text
    candidates = sorted({f for o in others for f in set(o) | set(mine) if separates(f, o)})
    chosen, left = [], list(others)
    while left:  # each step: the feature that tells us from the most siblings not yet told apart (ties: by name)
        best = max(  # ties: ours before unset ones, then the shortest to read, then the first by name
            candidates,
            key=lambda f: (sum(separates(f, o) for o in left), f in mine, -len(f[1]) - len(mine.get(f, ""))),
        )
        chosen.append(best)
        left = [o for o in left if not separates(best, o)]
    return _settings_text(chosen, mine)


def _fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _rows(runs: list[_Run], threat_model: Optional[str]) -> list[_Row]:
    keyed: dict[str, dict[Any, _Run]] = {}
    settings: dict[str, tuple[str, dict]] = {}
    for run in sorted(runs, key=lambda r: r.read_order):
        setting = _setting(run, threat_model)
        key = _canonical([run.method.label, setting])
        settings[key] = (run.method.label, setting)
        keyed.setdefault(key, {})[_canonical(run.seed_identity)] = run  # one record per seed: the latest

    def by_seed(run: _Run) -> tuple:
        seed = run.model.seed
        return (seed is None, seed if seed is not None else 0, run.model.record_id)

    rows = [
        _Row(settings[key][0], settings[key][1], sorted(found.values(), key=by_seed)) for key, found in keyed.items()
    ]
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
        varying = sorted(
            {
                key
                for i in members
                for key in rows[i].setting
                if len({_canonical(rows[j].setting.get(key)) for j in members}) > 1
            }
        )
        for i in members:
            differences[i] = ", ".join(f"{key}={_canonical(rows[i].setting.get(key))}" for key in varying)
    return differences


def _attack_info(rows: list[_Row], threat_model: str) -> dict[str, dict[str, Any]]:
    attacks: dict[str, dict[str, Any]] = {}
    for row in rows:
        for run in row.runs:
            for attack, entry in run.entries_of(threat_model).items():
                info = attacks.setdefault(
                    attack,
                    {"metrics": [], "directions": {}, "primary": entry.primary, "role": entry.role, "configs": set()},
                )
                info["metrics"] += [m for m in sorted(entry.metrics) if m not in info["metrics"]]
                for metric, direction in entry.directions.items():
                    info["directions"].setdefault(metric, direction)
                info["configs"].add(_canonical({k: v for k, v in entry.config.items() if k not in _NOT_A_SETTING}))
    return dict(sorted(attacks.items()))


def _families(attacks: dict[str, dict[str, Any]]) -> list[_Family]:
    """The worst-case columns: one per (primary metric, direction) of the experiment's adversaries."""
    counts = Counter(
        _Family(info["primary"], info["directions"][info["primary"]])
        for info in attacks.values()
        if info["role"] != "diagnostic" and info["primary"] in info["directions"]
    )
    for metric in BESIDE_THE_HEADLINE:
        reported = [
            info["directions"][metric]
            for info in attacks.values()
            if info["role"] != "diagnostic" and metric in info["directions"] and metric in info["metrics"]
        ]
        if reported:
            counts[_Family(metric, reported[0])] = 0  # after the primary metrics'
    families = sorted(counts, key=lambda f: (-counts[f], f.metric, f.direction))
    # the most exposed records (issue 23): every adversary that scored canaries competes on these columns
    adversary_metrics = {m for info in attacks.values() if info["role"] != "diagnostic" for m in info["metrics"]}
    families += [
        _Family(metric, "lower", primary_only=False) for metric in CANARY_HEADLINE if metric in adversary_metrics
    ]
    return families


def _experiments(runs: list[_Run]) -> list[_Experiment]:
    named: dict[tuple[str, str], list[_Run]] = {}
    derived: dict[tuple, list[_Run]] = {}
    for run in runs:
        threat_models = sorted({e.threat_model for e in run.entries}) or [UTILITY_ONLY]
        for tm in threat_models:
            if run.experiment:
                named.setdefault((tm, run.experiment), []).append(run)
            else:
                key = (
                    tm,
                    run.dataset.name,
                    _canonical(run.dataset.design_pool_sizes),
                    run.budget,
                    run.world_size,
                    run.effective_batch,
                    run.precision,
                )
                derived.setdefault(key, []).append(run)
    experiments = []
    for (tm, name), members in named.items():
        experiments.append(_experiment(tm, name, True, members))
    pending = []
    for key, members in derived.items():
        tm = key[0]
        ordered = sorted(members, key=lambda r: r.read_order)
        for attacks, group in _derived_groups(ordered, None if tm == UTILITY_ONLY else tm):
            pending.append((key, attacks, group))
    by_base: dict[tuple[str, str], list[int]] = {}
    for index, (key, _, _) in enumerate(pending):
        by_base.setdefault((key[0], _experiment_name(key[1], *key[3:])), []).append(index)
    for (tm, base), members in sorted(by_base.items()):
        names, settings = {}, {}
        for index in members:
            key, attacks, _ = pending[index]
            name = base
            if len({pending[j][0][2] for j in members}) > 1:  # same data and budget, other pool sizes
                pools = _mapping(json.loads(key[2]))
                canaries = f" + {pools['canary_candidates']} canary candidates" if "canary_candidates" in pools else ""
                name += (
                    f" · train {pools['train']}{canaries}" if "train" in pools else f" · pools [{_fingerprint(key[2])}]"
                )
            same_pools = [pending[j][1] for j in members if j != index and pending[j][0][2] == key[2]]
            if same_pools:  # and the attacks ran with other configurations: the settings that differ name it
                settings[index] = _distinguishing(attacks, same_pools)
                name += " · " + settings[index]
            names[index] = name
        for index in members:
            key, attacks, group = pending[index]
            name = names[index]
            if list(names.values()).count(name) > 1:  # never two experiments under one name (or one plot file)
                name += f" [{_fingerprint(_canonical([key, attacks]))}]"
            experiment = _experiment(tm, name, False, group)
            if index in settings:
                experiment.siblings_key = _canonical([tm, base, key[2]])
                experiment.attack_settings = settings[index]
            experiments.append(experiment)
    experiments.sort(key=lambda e: (e.threat_model == UTILITY_ONLY, e.threat_model, not e.named, e.name))
    return experiments


def _experiment(threat_model: str, name: str, named: bool, runs: list[_Run]) -> _Experiment:
    tm = None if threat_model == UTILITY_ONLY else threat_model
    rows = _rows(runs, tm)
    attacks = _attack_info(rows, threat_model) if tm else {}
    return _Experiment(threat_model, name, named, rows, _families(attacks), attacks, _differences(rows))
