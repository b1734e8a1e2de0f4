"""Whether a ranking of two rows on a worst-case column is significant (issue 23 item 5).

Two rows' order on a worst-case column is called significant only when their 95% intervals do not overlap or a
paired t-test over their matched seeds (the same training and data seeds; ``scipy.stats.ttest_rel``) gives
p < 0.05; otherwise the page says *not significant*. A row's interval is the record's own for a single seed (e.g.
a Clopper-Pearson interval of a TPR) and the t-interval of the mean over its seeds otherwise. With three seeds
the t-test is the only one that can decide (the smallest two-sided Wilcoxon p-value over three pairs is 0.25).
The ranking is checked step by step (each row against the next more private one), no correction for multiple
comparisons: a step called significant may still be a chance finding among many.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from bench.claims import CONFIDENCE, mean_interval
from bench.leaderboard.experiments import _canonical, _Experiment, _Family, _Row, worst_case
from bench.leaderboard.tables import _escape, _number, _row_worst_case

#: the level below which a paired test calls an order significant
SIGNIFICANCE_LEVEL = 0.05


@dataclass(frozen=True)
class Comparison:
    """Two rows on one worst-case column: the paired test over matched seeds, and whether the intervals overlap."""

    seeds: int  # matched seeds
    p_value: Optional[float]  # None: fewer than two matched seeds, or no spread in their differences
    intervals_apart: Optional[bool]  # None: a row without an interval

    @property
    def significant(self) -> bool:
        return bool(self.intervals_apart) or (self.p_value is not None and self.p_value < SIGNIFICANCE_LEVEL)

    @property
    def testable(self) -> bool:
        return self.p_value is not None or self.intervals_apart is not None

    @property
    def text(self) -> str:
        """'significant (p=0.012, 3 seeds)', 'significant (intervals apart)', 'n.s. (p=0.42, 3 seeds)', ..."""
        reasons = []
        if self.p_value is not None:
            reasons.append(f"p={_p_text(self.p_value)}, {self.seeds} seeds")
        if self.intervals_apart is not None:
            reasons.append("intervals apart" if self.intervals_apart else "intervals overlap")
        if not reasons:
            reasons.append(f"no test: {self.seeds} matched seed{'s' if self.seeds != 1 else ''}, no interval")
        return ("significant" if self.significant else "n.s.") + f" ({'; '.join(reasons)})"


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def per_seed(row: _Row, threat_model: str, family: _Family) -> dict[str, float]:
    """The row's worst case on ``family`` per seed (training seed, data seed); unseeded runs cannot be matched."""
    found = {}
    for run in row.runs:
        if run.model.seed is None:
            continue
        try:
            worst = worst_case(
                list(run.entries_of(threat_model).values()), threat_model, family.metric, family.primary_only
            )
        except ValueError:
            continue
        if worst is not None and worst[2] == family.direction:
            found[_canonical(run.seed_identity)] = worst[0]
    return found


def interval(row: _Row, threat_model: str, family: _Family) -> Optional[tuple[float, float]]:
    """The 95% interval of the row's worst case: the record's own for one seed, the mean's t-interval for several."""
    worst = _row_worst_case(row, threat_model, family)
    if worst is None:
        return None
    if len(worst.values) == 1:
        return worst.interval
    return mean_interval([float(value) for value in worst.values], CONFIDENCE)


def compare(first: _Row, second: _Row, threat_model: str, family: _Family) -> Comparison:
    """The paired t-test over the seeds both rows ran, and whether their intervals are apart."""
    from scipy import stats

    ours, theirs = per_seed(first, threat_model, family), per_seed(second, threat_model, family)
    matched = sorted(set(ours) & set(theirs))
    p_value = None
    if len(matched) >= 2:
        differences = np.array([ours[seed] - theirs[seed] for seed in matched])
        if np.ptp(differences) > 0:  # identical differences give no t statistic
            p_value = float(stats.ttest_rel([ours[s] for s in matched], [theirs[s] for s in matched]).pvalue)
    a, b = interval(first, threat_model, family), interval(second, threat_model, family)
    apart = None if a is None or b is None else (a[1] < b[0] or b[1] < a[0])
    return Comparison(len(matched), p_value, apart)


def ranking_lines(experiment: _Experiment) -> list[str]:
    """Per worst-case column with two rows or more: the rows most private first, each step's verdict."""
    lines = []
    for family in experiment.families:
        means = {}
        for index, row in enumerate(experiment.rows):
            if (worst := _row_worst_case(row, experiment.threat_model, family)) is not None:
                means[index] = float(np.mean(worst.values))  # as the table shows it
        if len(means) < 2:
            continue
        order = sorted(means, key=lambda i: (-means[i] if family.direction == "higher" else means[i], i))
        steps = [
            compare(experiment.rows[a], experiment.rows[b], experiment.threat_model, family)
            for a, b in zip(order, order[1:])
        ]
        title = f"worst-case {_escape(family.metric)} {family.arrow}"
        if not any(step.testable for step in steps):
            lines += [
                f"Ranking by {title}: not significant (no step can be tested: under two matched seeds, and a row "
                "without an interval).",
                "",
            ]
            continue
        lines += [
            f"Is the ranking by {title} significant? Most private first, each row against the one above it: a "
            f"paired t-test over matched seeds (p < {SIGNIFICANCE_LEVEL}) or {CONFIDENCE:.0%} intervals apart; "
            "n.s.: not significant, their order is not established.",
            "",
        ]
        for rank, index in enumerate(order):
            verdict = "" if rank == 0 else f", {steps[rank - 1].text}"
            row, difference = experiment.rows[index], experiment.differences[index]
            name = row.label + (f" ({difference})" if difference else "")
            lines.append(f"{rank + 1}. {_escape(name)}: {_number(means[index])}{verdict}")
        lines.append("")
    return lines
