"""DP-SGD as the reference of the black-box tables: which defense does some DP-SGD run dominate?

A row is *dominated by DP-SGD* when some DP-SGD row of the same experiment is at least as accurate and at
least as private on every worst-case metric both report (the strongest attack of each family, canary
metrics included once records carry them). The DP-SGD rows' best accuracy per epsilon is the frontier
(``bench sweep dpsgd_frontier_mnist_shared``); its tuning was not private (see that sweep's comment).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from bench.leaderboard.experiments import _Experiment
from bench.leaderboard.tables import _mean, _row_worst_case, _utility_key

#: the cost a method with a formal guarantee reports: its accountant's epsilon. The leaderboard never names a method:
#: a row is a DP-SGD reference because its records carry this, whatever the method is called
DP_EPSILON = "dp_epsilon"
#: (utility, {metric: (worst-case value, direction: "higher"/"lower" means more private)})
Point = tuple[float, dict[str, tuple[float, str]]]


def dominates(reference: Point, candidate: Point) -> bool:
    """Whether ``reference`` is at least as accurate and at least as private as ``candidate`` on every shared metric."""
    shared = set(reference[1]) & set(candidate[1])
    if reference[0] < candidate[0] or not shared:
        return False
    for metric in shared:
        (ours, direction), (theirs, _) = reference[1][metric], candidate[1][metric]
        if (ours < theirs) if direction == "higher" else (ours > theirs):
            return False
    return True


def _points(experiment: _Experiment) -> dict[int, Point]:
    utility = _utility_key(experiment)
    points = {}
    for index, row in enumerate(experiment.rows):
        accuracy = _mean(row.values(lambda run: run.utility.get(utility))) if utility else None
        worst = {}
        for family in experiment.families:
            found = _row_worst_case(row, experiment.threat_model, family)
            if found is not None:
                worst[family.metric] = (float(np.mean(found.values)), family.direction)
        if accuracy is not None and worst:
            points[index] = (accuracy, worst)
    return points


def is_dpsgd_row(row) -> bool:
    """Every run of the row was trained with an accountant (its record's cost has ``dp_epsilon``)."""
    return bool(row.runs) and all(run.cost.get(DP_EPSILON) is not None for run in row.runs)


def dominated_by_dpsgd(experiment: _Experiment) -> dict[int, Optional[bool]]:
    """For every row that is not DP-SGD: True/False, or None when the experiment has no comparable DP-SGD row."""
    points = _points(experiment)
    references = [points[i] for i, row in enumerate(experiment.rows) if is_dpsgd_row(row) and i in points]
    verdicts: dict[int, Optional[bool]] = {}
    for index, row in enumerate(experiment.rows):
        if is_dpsgd_row(row):
            continue
        point = points.get(index)
        verdicts[index] = None if point is None or not references else any(dominates(r, point) for r in references)
    return verdicts


def dpsgd_frontier(experiment: _Experiment) -> list[tuple[float, float]]:
    """(epsilon, best accuracy) per DP-SGD epsilon of the experiment, ascending in epsilon: the reference curve."""
    utility, best = _utility_key(experiment), {}
    for row in experiment.rows:
        if not is_dpsgd_row(row) or utility is None:
            continue
        for run in row.runs:
            epsilon, accuracy = run.cost.get(DP_EPSILON), run.utility.get(utility)
            if epsilon is not None and accuracy is not None:
                key = round(float(epsilon), 2)
                best[key] = max(best.get(key, -np.inf), float(accuracy))
    return sorted(best.items())
