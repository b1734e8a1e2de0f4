"""DP-SGD as the reference of the black-box tables: which defense does some DP-SGD run dominate?

A row is *dominated by DP-SGD* when some DP-SGD row of the same experiment is at least as accurate and at
least as private on every worst-case metric both report (the strongest attack of each family, canary
metrics included once records carry them). The DP-SGD rows' best accuracy per epsilon is the frontier
(``bench sweep dpsgd_frontier_mnist_shared``); its tuning was not private (see that sweep's comment).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from bench.leaderboard.experiments import _canonical, _Experiment, _Family, _Row
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


def _point(row: _Row, threat_model: str, families: Sequence[_Family], utility: Optional[str]) -> Optional[Point]:
    """The row's mean utility and its mean worst case on each family it reports (None without either)."""
    accuracy = _mean(row.values(lambda run: run.utility.get(utility))) if utility else None
    worst = {}
    for family in families:
        found = _row_worst_case(row, threat_model, family)
        if found is not None:
            worst[family.metric] = (float(np.mean(found.values)), family.direction)
    return (accuracy, worst) if accuracy is not None and worst else None


def is_dpsgd_row(row) -> bool:
    """Every run of the row was trained with an accountant (its record's cost has ``dp_epsilon``)."""
    return bool(row.runs) and all(run.cost.get(DP_EPSILON) is not None for run in row.runs)


def _data_key(row: _Row) -> str:
    run = row.runs[0]
    return _canonical([run.dataset.name, run.dataset.design_pool_sizes])


def reference_rows(experiment: _Experiment, experiments: Sequence[_Experiment] = ()) -> list[_Row]:
    """The DP-SGD rows ``experiment`` is measured against: its own, and those of every other experiment of the same
    threat model on the same data and pools (the same members and non-members). A tuned DP-SGD frontier trains with
    its own epochs and batch, so it sits in experiments of its own; its attacks ran with its own recipe."""
    keys = {_data_key(row) for row in experiment.rows if row.runs}
    found = [row for row in experiment.rows if is_dpsgd_row(row)]
    for other in experiments:
        if other is not experiment and other.threat_model == experiment.threat_model:
            found += [row for row in other.rows if is_dpsgd_row(row) and _data_key(row) in keys]
    return found


def dominated_by_dpsgd(
    experiment: _Experiment, references: Optional[Sequence[_Row]] = None
) -> dict[int, Optional[bool]]:
    """For every row that is not DP-SGD: True/False, or None when there is no comparable DP-SGD row.

    ``references``: the DP-SGD rows to compare with (default: the experiment's own; see :func:`reference_rows`),
    each judged by its own strongest attack on the experiment's worst-case metrics."""
    utility = _utility_key(experiment)
    references = [row for row in experiment.rows if is_dpsgd_row(row)] if references is None else references
    points = [p for row in references if (p := _point(row, experiment.threat_model, experiment.families, utility))]
    verdicts: dict[int, Optional[bool]] = {}
    for index, row in enumerate(experiment.rows):
        if is_dpsgd_row(row):
            continue
        point = _point(row, experiment.threat_model, experiment.families, utility)
        verdicts[index] = None if point is None or not points else any(dominates(r, point) for r in points)
    return verdicts


def epsilon_of(row: _Row) -> float:
    """The row's accountant epsilon (mean over its seeds), to two decimals: the frontier's key."""
    return round(float(np.mean([float(run.cost[DP_EPSILON]) for run in row.runs])), 2)


def frontier_rows(references: Sequence[_Row], utility: Optional[str]) -> list[tuple[float, _Row]]:
    """(epsilon, row) of the most accurate DP-SGD row per epsilon (mean over seeds), ascending in epsilon: the
    reference curve. Its tuning was not private (see ``bench/sweeps/dpsgd_frontier_mnist_shared.yaml``)."""
    best: dict[float, tuple[float, _Row]] = {}
    for row in references:
        accuracy = _mean(row.values(lambda run: run.utility.get(utility))) if utility else None
        if accuracy is None:
            continue
        epsilon = epsilon_of(row)
        if epsilon not in best or accuracy > best[epsilon][0]:
            best[epsilon] = (accuracy, row)
    return [(epsilon, row) for epsilon, (_, row) in sorted(best.items(), key=lambda item: item[0])]


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
