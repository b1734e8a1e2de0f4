"""Numbers and the Markdown tables of an experiment: the headline, the per-attack detail, its notes."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from bench.leaderboard.experiments import CANARY_HEADLINE, _canonical, _Experiment, _Family, _Row, worst_case
from bench.leaderboard.records import (
    _COMPRESSION,
    _NONZERO,
    _PARAMETERS,
    _RELEASED,
    FAILED,
    MAX_CELL_CHARS,
    MAX_TABLE_COLUMNS,
    MISSING,
    NOT_CONVERGED,
    PARETO,
    PRIMARY_UTILITY,
    UTILITY_ONLY,
)


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
            found = worst_case(entries, threat_model, family.metric, primary_only=family.primary_only)
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


def _failed_adversaries(row: _Row, threat_model: str, metric: str) -> list[str]:
    """Adversaries of ``threat_model`` whose primary metric is ``metric`` and that failed in some run of ``row``."""
    return sorted(
        {
            entry.attack
            for run in row.runs
            for entry in run.entries_of(threat_model).values()
            if entry.adversary and entry.error and (entry.primary == metric or metric in CANARY_HEADLINE)
        }
    )


def _failed_mark(failed: list[str]) -> str:
    return f" {FAILED} {_escape(', '.join(failed))} failed" if failed else ""


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


def _no_markup(text: str) -> str:
    """Text from records shown as text, never as HTML: every '<' that could open a tag, comment or declaration (a
    label `<img src=x onerror=...>`) becomes '&lt;'; a comparison such as '0.55 < 0.65' stays as written."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _escape(text: str) -> str:
    # and never a table break
    return _no_markup(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Text from records inside a `code span`: a backtick would end the span and let the rest be markup."""
    return text.replace("`", "'").replace("\n", " ")


def _clip_to(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _markdown_table(headers: list[str], rows: list[list[str]], left: int = 1, clip: bool = True) -> list[str]:
    assert len(headers) <= MAX_TABLE_COLUMNS, headers  # callers split wider tables
    lines = [
        "| " + " | ".join(_escape(h) for h in headers) + " |",
        "|" + "|".join([":---"] * left + ["---:"] * (len(headers) - left)) + "|",
    ]
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
    columns += [
        _CostColumn(key, key, False) for key in declared if key not in shown and any(key in r.cost for r in runs)
    ]
    return columns


#: the headline's column saying whether some DP-SGD row is at least as accurate and as private (bench.leaderboard.dpsgd)
DOMINATED_HEADER = "Dominated by DP-SGD"


def _headline(
    experiment: _Experiment, front: set[int], dominated: Optional[dict[int, Optional[bool]]] = None
) -> list[str]:
    """The experiment's headline table; ``dominated``: row -> dominated by DP-SGD (a column where any is compared)."""
    utility = _utility_key(experiment)
    costs = _cost_columns(experiment)
    has_setting = any(experiment.differences)
    compared = dominated is not None and any(v is not None for v in dominated.values())
    families = experiment.families[: MAX_TABLE_COLUMNS - 4]  # beyond that (not seen yet): in the detail and the CSV
    # method, setting, utility, worst cases, dominated, seeds
    fixed = 1 + has_setting + (utility is not None) + len(families) + compared + 1
    costs = costs[: max(0, MAX_TABLE_COLUMNS - fixed)]  # the rest is in the CSV
    headers = ["Method"] + (["Setting"] if has_setting else []) + ([utility.capitalize()] if utility else [])
    headers += [f"Worst-case {f.metric} {f.arrow}" for f in families]
    headers += [DOMINATED_HEADER] if compared else []
    headers += [c.header for c in costs] + ["Seeds"]
    utility_means = (
        {
            i: m
            for i, row in enumerate(experiment.rows)
            if (m := _mean(row.values(lambda r: r.utility.get(utility)))) is not None
        }
        if utility
        else {}
    )
    worst = {f: [_row_worst_case(row, experiment.threat_model, f) for row in experiment.rows] for f in families}
    worst_means = {
        f: {i: float(np.mean(w.values)) for i, w in enumerate(cells) if w is not None} for f, cells in worst.items()
    }
    body = []
    for i, row in enumerate(experiment.rows):
        degenerate = " (degenerate)" if any(run.model.degenerate for run in row.runs) else ""
        # `bench audit`: trained by the user's recipe on the user's split, comparable only within its experiment
        degenerate += " (external)" if any(run.model.external is not None for run in row.runs) else ""
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
            cell = _worst_case_cell(worst[family][i], _is_best(worst_means[family], i, family.direction == "higher"))
            cells.append(cell + _failed_mark(_failed_adversaries(row, experiment.threat_model, family.metric)))
        if compared:
            cells.append({True: "yes", False: "no"}.get(dominated.get(i), MISSING))
        for column in costs:
            text = _summary(row.values(lambda r, k=column.key: r.cost.get(k)), column.count, exact=True)
            paper = row.paper(column.key)
            cells.append(text if paper is None else f"{text} (paper {_number(paper)})")
        cells.append(str(len(row.runs)))
        body.append(cells)
    return _markdown_table(headers, body, left=1 + has_setting)


def _metric_header(metric: str, direction: Optional[str]) -> str:
    """The metric's name with an arrow for the better direction (none when the direction is unknown)."""
    arrow = {"higher": "↑", "lower": "↓"}.get(direction, "")
    return f"{metric} {arrow}".strip()


def _attack_tables(experiment: _Experiment, attack: str, info: dict[str, Any]) -> list[str]:
    """One attack's metrics per row, split into tables of at most MAX_TABLE_COLUMNS columns."""
    rows = [
        (i, row)
        for i, row in enumerate(experiment.rows)
        if any(attack in run.entries_of(experiment.threat_model) for run in row.runs)
    ]
    metrics = [m for m in info["metrics"]]
    if info["primary"] in metrics:  # the primary metric first
        metrics.remove(info["primary"])
        metrics.insert(0, info["primary"])
    has_setting = any(experiment.differences[i] for i, _ in rows)
    fixed = 2 + has_setting
    per_table = MAX_TABLE_COLUMNS - fixed
    lines = []
    for start in range(0, len(metrics), per_table):
        chunk = metrics[start : start + per_table]
        headers = (
            ["Method"]
            + (["Setting"] if has_setting else [])
            + [_metric_header(m, info["directions"].get(m)) for m in chunk]
            + ["Seeds"]
        )
        body = []
        for i, row in rows:
            entries = [
                run.entries_of(experiment.threat_model)[attack]
                for run in row.runs
                if attack in run.entries_of(experiment.threat_model)
            ]
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
    revisions = sorted(
        {
            run.revision[:7] + ("+dirty" if run.revision.endswith("+dirty") else "")
            for row in experiment.rows
            for run in row.runs
            if run.revision
        }
    )
    configs = sorted({name for row in experiment.rows for run in row.runs for name in run.configs})
    lines = []
    if configs:
        lines.append("Produced by `bench fit --config NAME` with " + ", ".join(f"`{_code(c)}`" for c in configs) + ".")
    shown = ", ".join(f"`{_code(r)}`" for r in revisions) or "not recorded"
    lines.append("Revision" + ("s: " if len(revisions) > 1 else ": ") + shown + ".")
    return lines


def _details(experiment: _Experiment) -> list[str]:
    lines = ["<details><summary>Per-attack detail, diagnostics and provenance</summary>", ""]
    adversaries = {a: i for a, i in experiment.attacks.items() if i["role"] != "diagnostic"}
    diagnostics = {a: i for a, i in experiment.attacks.items() if i["role"] == "diagnostic"}
    for title, attacks in (
        ("Adversaries", adversaries),
        ("Diagnostics (the method's own parts; never the verdict)", diagnostics),
    ):
        if not attacks:
            continue
        lines += [f"**{title}**", ""]
        for attack, info in attacks.items():
            primary = f" (primary metric: {_escape(info['primary'])})" if info["primary"] else ""
            lines += [f"*{_escape(attack)}*{primary}: {_escape(_config_text(info))}", ""]
            lines += _attack_tables(experiment, attack, info)
    settings = [
        (row.label, experiment.differences[i])
        for i, row in enumerate(experiment.rows)
        if len(experiment.differences[i]) > MAX_CELL_CHARS
    ]
    if settings:
        lines += ["Settings in full:", ""] + [f"- {_escape(label)}: `{_code(text)}`" for label, text in settings] + [""]
    sources = sorted({run.model.paper_source for row in experiment.rows for run in row.runs} - {None})
    if sources:
        lines += ["Paper values from: " + "; ".join(_escape(s) for s in sources) + ".", ""]
    lines += _provenance(experiment) + ["", "</details>", ""]
    return lines


#: beside the canary candidates in an experiment's pools (the train pool's size is its members without them)
CANARY_NOTE = " (each also in the train pool with probability 1/2)"


def _experiment_intro(experiment: _Experiment) -> str:
    pools = {_canonical(run.dataset.design_pool_sizes) for row in experiment.rows for run in row.runs}
    pool_text = ""
    if len(pools) == 1 and isinstance(sizes := json.loads(pools.pop()), dict) and sizes:
        pool_text = (
            " Pools: "
            + ", ".join(
                f"{k.replace('_', ' ')} {_number(float(v), True)}" + (CANARY_NOTE if k == "canary_candidates" else "")
                for k, v in sizes.items()
                if isinstance(v, (int, float))
            )
            + "."
        )
    if experiment.named:
        return f"Experiment `{_code(experiment.name)}`, as the records name it.{pool_text}"
    if experiment.threat_model == UTILITY_ONLY:
        return f"Same data, training budget, batch, devices and precision.{pool_text}"
    return f"Same data, training budget, batch, devices and precision; each attack with one configuration.{pool_text}"


def _notes(experiment: _Experiment, dominated: Optional[dict[int, Optional[bool]]] = None) -> list[str]:
    notes = []
    if dominated is not None and any(v is not None for v in dominated.values()):
        notes.append(
            f"{DOMINATED_HEADER}: some DP-SGD row (records with an accountant's epsilon) on the same data and pools, "
            "in this experiment or another, is at least as accurate and at least as private on every worst-case column "
            "both report, each judged by its own strongest attack; the DP-SGD frontier's tuning was not private."
        )
    flagged = sorted(
        {
            e.attack
            for row in experiment.rows
            for run in row.runs
            for e in run.entries_of(experiment.threat_model).values()
            if e.converged is False
        }
    )
    if flagged:
        notes.append(
            f"{NOT_CONVERGED} stopped at its maximum budget without converging (its result is a lower bound on "
            f"what this attacker can do): {_escape(', '.join(flagged))}."
        )
    failed = sorted(
        {
            e.attack
            for row in experiment.rows
            for run in row.runs
            for e in run.entries_of(experiment.threat_model).values()
            if e.adversary and e.error
        }
    )
    if failed:
        notes.append(
            f"{FAILED} failed after training, so it has no result (the record keeps its error); the worst case is over "
            f"the other attacks and may understate the leakage: {_escape(', '.join(failed))}."
        )
    if any(run.paper for row in experiment.rows for run in row.runs):
        notes.append("Paper values in parentheses (sources under the detail).")
    return notes
