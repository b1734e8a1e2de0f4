"""Membership-inference metrics: attack accuracy, AUC, TPR at low FPR, their intervals, and the ROC curve.

Scores are "higher means member", compared in float64. The attack accuracy is the balanced
accuracy of the attack's own decision (score >= threshold) -- the mean of its true-positive and
true-negative rates, the accuracy on a set with as many members as non-members (the paper's
"attack accuracy", after Nasr et al. 2018). AUC and TPR at 1% / 0.1% FPR (Carlini et al. 2022)
need no threshold.

The ROC curve is the exact one (scikit-learn's, every distinct score a threshold): equal scores
get one decision, so ties are handled by the ROC computation and never by rounding. Every
TPR at x% FPR comes with the FPR actually achieved (the largest ROC point at or below x%), the
score threshold that achieves it and a Clopper-Pearson interval; the AUC with DeLong's interval.
A reported FPR that the non-member count cannot resolve (x% needs at least 1/x non-members)
comes with a warning.

:func:`epsilon_lower_bound` turns an attack's scores into an empirical lower bound on the
epsilon of (epsilon, delta)-DP (Jagielski et al. 2020; Nasr et al. 2021): a threshold chosen on
one random half of the queries, Clopper-Pearson bounds on the other half.

:func:`one_run_audit` is the one-run audit of Steinke, Nasr and Jagielski (NeurIPS 2023) over canaries each
included with probability 1/2: guesses on the k+ highest and k- lowest scores, abstention on the rest, and the
largest epsilon the number of right guesses rejects. :func:`canary_report` gives it with the canaries' AUC and TPR
at low FPR; :func:`membership_slices` the attack per class or per correct/incorrect prediction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import roc_curve as _exact_roc
from torch import Tensor

#: the FPRs at which the TPR is reported (metric name -> FPR)
LOW_FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
#: metric -> which way means more privacy (all of them: lower)
DIRECTIONS = {
    "attack_accuracy": "lower",
    "auc": "lower",
    "tpr_at_1pct_fpr": "lower",
    "tpr_at_0.1pct_fpr": "lower",
    "empirical_epsilon": "lower",
    "canary_auc": "lower",
    "canary_tpr_at_1pct_fpr": "lower",
    "canary_tpr_at_0.1pct_fpr": "lower",
    "canary_audit_epsilon": "lower",
}


def _as_arrays(scores: Tensor, is_member: Tensor) -> tuple[np.ndarray, np.ndarray]:
    scores = scores.detach().flatten().to(torch.float64).cpu().numpy()
    target = is_member.detach().flatten().long().cpu().numpy()
    if not (target == 1).any() or not (target == 0).any():
        raise ValueError("membership metrics need both members and non-members")
    if not np.isfinite(scores).all():
        raise ValueError("membership scores must be finite (an attack produced NaN or infinity)")
    return scores, target


def exact_roc(scores: Tensor, is_member: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score (decision: score >= threshold), from (0, 0) to (1, 1)."""
    scores, target = _as_arrays(scores, is_member)
    fpr, tpr, thresholds = _exact_roc(target, scores, drop_intermediate=False)
    return fpr, tpr, thresholds


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact two-sided binomial interval of a proportion ``successes / trials``."""
    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def delong_interval(scores: Tensor, is_member: Tensor, confidence: float = 0.95) -> tuple[float, float, float]:
    """AUC and DeLong's interval (DeLong et al. 1988, with midranks: Sun and Xu 2014), clipped to [0, 1]."""
    scores, target = _as_arrays(scores, is_member)
    positive, negative = scores[target == 1], scores[target == 0]
    m, n = len(positive), len(negative)
    rank_all = stats.rankdata(np.concatenate([positive, negative]))  # midranks: ties count one half
    rank_positive, rank_negative = stats.rankdata(positive), stats.rankdata(negative)
    auc = (rank_all[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (rank_all[:m] - rank_positive) / n  # each member's share of non-members it beats
    v01 = 1 - (rank_all[m:] - rank_negative) / m  # each non-member's share of members beating it
    variance = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(variance, 0.0))
    return float(auc), float(max(0.0, auc - half)), float(min(1.0, auc + half))


def tpr_at_fpr(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, target_fpr: float
) -> tuple[float, float, Optional[float]]:
    """The best TPR with FPR <= ``target_fpr`` on the exact ROC.

    Returns (tpr, achieved fpr, threshold; None: no score reaches it).
    """
    allowed = np.nonzero(fpr <= target_fpr + 1e-12)[0]
    best = allowed[np.argmax(tpr[allowed])]
    threshold = float(thresholds[best]) if np.isfinite(thresholds[best]) else None
    return float(tpr[best]), float(fpr[best]), threshold


def membership_report(
    scores: Tensor, is_member: Tensor, threshold: Optional[float] = None, confidence: float = 0.95
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """(metrics, details, warnings): accuracy at ``threshold`` (None: left out), AUC, TPR at 1% / 0.1% FPR.

    ``details`` holds the AUC's DeLong interval and, for every TPR at x% FPR, the achieved FPR, the
    threshold, the member and non-member counts and a Clopper-Pearson interval of the TPR.
    """
    values, target = _as_arrays(scores, is_member)
    members, nonmembers = int((target == 1).sum()), int((target == 0).sum())
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"confidence": confidence}
    warnings: list[str] = []
    if threshold is not None:
        decision = values >= threshold
        tpr, tnr = decision[target == 1].mean(), (~decision[target == 0]).mean()
        metrics["attack_accuracy"] = float((tpr + tnr) / 2)
    auc, low, high = delong_interval(scores, is_member, confidence)
    metrics["auc"] = auc
    details["auc_interval"] = [low, high]
    fpr, tpr, thresholds = exact_roc(scores, is_member)
    for name, target_fpr in LOW_FPRS.items():
        value, achieved, cut = tpr_at_fpr(fpr, tpr, thresholds, target_fpr)
        metrics[name] = value
        details[name] = {
            "target_fpr": target_fpr,
            "achieved_fpr": achieved,
            "threshold": cut,
            "interval": list(clopper_pearson(round(value * members), members, confidence)),
            "members": members,
            "nonmembers": nonmembers,
        }
        needed = math.ceil(1 / target_fpr)
        if nonmembers < needed:
            warnings.append(
                f"{name}: {nonmembers} non-members cannot resolve an FPR of {100 * target_fpr:g}% "
                f"(it needs at least {needed:,}); the value is the TPR at FPR {achieved:.4g}"
            )
    return metrics, details, warnings


def membership_metrics(scores: Tensor, is_member: Tensor, threshold: Optional[float] = None) -> dict[str, float]:
    """Attack accuracy at ``threshold`` (None: no decision, accuracy left out), AUC, TPR at 1% and 0.1% FPR."""
    return membership_report(scores, is_member, threshold)[0]


def _dp_epsilon(tpr: float, fpr: float, tnr: float, fnr: float, delta: float) -> float:
    """The largest epsilon that (TPR, FPR) and the mirrored test (TNR, FNR) force: TPR <= e^eps FPR + delta."""
    bounds = [math.log((a - delta) / b) for a, b in ((tpr, fpr), (tnr, fnr)) if a - delta > 0 and b > 0]
    return max([0.0] + bounds)


def epsilon_lower_bound(
    scores: Tensor, is_member: Tensor, delta: float, generator: torch.Generator, confidence: float = 0.95
) -> dict[str, Any]:
    """An empirical lower bound on epsilon of (epsilon, delta)-DP from membership scores of random canaries.

    (epsilon, delta)-DP bounds every test that tells members from non-members: TPR <= e^eps FPR +
    delta and TNR <= e^eps FNR + delta (Kairouz et al. 2015). Valid when members and non-members
    were drawn at random from one population (the DataModule's pools are). The threshold with the
    largest point estimate is chosen on a random half of the queries; on the other half, one-sided
    Clopper-Pearson bounds give with probability ``confidence``
    eps >= max(log((TPR_low - delta) / FPR_high), log((TNR_low - delta) / FNR_high)), floored at 0.
    """
    values, target = _as_arrays(scores, is_member)
    order = torch.randperm(len(values), generator=generator).numpy()
    select, held = order[: len(order) // 2], order[len(order) // 2 :]
    result: dict[str, Any] = {
        "epsilon": 0.0,
        "threshold": None,
        "queries": int(len(held)),
        "confidence": confidence,
        "delta": delta,
    }
    if len(np.unique(target[select])) < 2 or len(np.unique(target[held])) < 2:
        return result

    def counts(index: np.ndarray, cut: float) -> tuple[int, int, int, int]:
        decision, member = values[index] >= cut, target[index] == 1
        return int(decision[member].sum()), int(member.sum()), int(decision[~member].sum()), int((~member).sum())

    def point(cut: float) -> float:  # a floor of one count keeps an empty FPR from reading as an infinite epsilon
        tp, p, fp, n = counts(select, cut)
        return _dp_epsilon(tp / p, max(fp, 1) / n, (n - fp) / n, max(p - tp, 1) / p, delta)

    cut = float(max(np.unique(values[select]), key=point))
    tp, p, fp, n = counts(held, cut)
    # four one-sided bounds (TPR and TNR from below, FPR and FNR from above), each failing with probability
    # (1 - confidence) / 4: two-sided Clopper-Pearson intervals at (1 + confidence) / 2 have that in each tail,
    # and a union bound keeps the whole claim at `confidence`
    level = (1 + confidence) / 2
    tpr_low, _ = clopper_pearson(tp, p, level)
    _, fpr_high = clopper_pearson(fp, n, level)
    tnr_low, _ = clopper_pearson(n - fp, n, level)
    _, fnr_high = clopper_pearson(p - tp, p, level)
    result.update(
        epsilon=_dp_epsilon(tpr_low, fpr_high, tnr_low, fnr_high, delta),
        threshold=cut,
        # the counts the bound comes from, so that it can be checked or recomputed at another confidence
        counts={"true_positives": tp, "members": p, "false_positives": fp, "nonmembers": n},
    )
    return result


def roc_curve(scores: Tensor, is_member: Tensor, points: int = 101) -> dict[str, list[float]]:
    """The ROC curve at ``points`` FPRs spaced log-uniformly, for records and plots.

    Log-uniform: low FPRs are where attacks differ.
    """
    fpr, tpr, _ = exact_roc(scores, is_member)
    grid = np.logspace(-4, 0, points)
    # the best TPR reachable at FPR <= each grid value: a step function, read off exactly
    index = np.searchsorted(fpr, grid + 1e-12, side="right") - 1
    best = np.maximum.accumulate(tpr)
    return {"fpr": grid.tolist(), "tpr": best[np.clip(index, 0, None)].tolist()}


def plot_roc(curves: Mapping[str, Mapping[str, list[float]]], path: str | Path, title: str = "") -> Path:
    """Log-log ROC curves of several attacks (name -> {fpr, tpr}) with the chance diagonal, as a PNG."""
    # Figure + the Agg canvas, not pyplot: no global backend switch for whoever imported us (as the leaderboard)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for name, curve in curves.items():
        axis.plot(curve["fpr"], [max(t, 1e-5) for t in curve["tpr"]], label=name)
    axis.plot([1e-4, 1], [1e-4, 1], "k--", linewidth=0.8, label="chance")
    axis.set(
        xscale="log",
        yscale="log",
        xlim=(1e-4, 1),
        ylim=(1e-4, 1.05),
        xlabel="false-positive rate",
        ylabel="true-positive rate",
        title=title,
    )
    axis.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The one-run privacy audit (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023)
# ---------------------------------------------------------------------------------------------------------------------
#: the guess counts k (k+ = k- = k) the audit tries when none is given (see :func:`one_run_audit` for how one is kept)
AUDIT_GUESS_GRID = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
#: how the audit keeps one k of the grid: ``bonferroni`` (the default) pays for every tried k, ``uncorrected`` does not
AUDIT_K_SELECTIONS = ("bonferroni", "uncorrected")


def one_run_audit_p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[at least ``correct`` right guesses] if the training were (epsilon, delta)-DP (Steinke et al. 2023, Thm 5.2).

    ``canaries`` (m) were each included independently with probability 1/2; the attacker made ``guesses`` (r)
    guesses and abstained on the rest. For pure DP the count of right guesses is dominated by Binomial(r, q),
    q = e^eps / (1 + e^eps) (randomised response's accuracy); delta adds max_i P[v - i <= Binomial < v] / i
    times 2 m delta (the paper's Algorithm / Proposition for approximate DP; their reference code's p-value).
    """
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"the audit needs 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"the audit needs epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, q))  # P[Binomial(r, q) >= v]
    if correct == 0 or delta == 0:
        return min(tail, 1.0)
    below = np.cumsum(stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q))  # P[v - i <= Bin < v], i = 1..v
    alpha = float(np.max(below / np.arange(1, correct + 1)))
    return min(tail + alpha * delta * 2 * canaries, 1.0)


def one_run_audit_epsilon(canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that ``correct`` right guesses out of ``guesses`` reject at level 1 - ``confidence``.

    With probability ``confidence`` the training is not (eps, delta)-DP for any eps below the returned value
    (0: no eps is rejected). The p-value grows with epsilon, so bisection finds the boundary.
    """
    level = 1.0 - confidence
    if one_run_audit_p_value(canaries, guesses, correct, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while one_run_audit_p_value(canaries, guesses, correct, high, delta) < level:
        low, high = high, 2 * high
        if high > 1e4:  # every guess right and delta 0: the bound is only limited by m
            return low
    for _ in range(60):
        middle = (low + high) / 2
        if one_run_audit_p_value(canaries, guesses, correct, middle, delta) < level:
            low = middle
        else:
            high = middle
    return low


def _guess_counts(scores: np.ndarray, inclusion: np.ndarray, positive: int, negative: int) -> tuple[int, int, int]:
    """(guesses, right guesses, right IN guesses): the ``positive`` highest scores guessed IN, ``negative`` lowest OUT.

    A stable sort on the canaries' own order breaks ties; that order was fixed before inclusion was drawn, so a tie
    cannot leak inclusion into the guess.
    """
    order = np.argsort(scores, kind="stable")
    guessed_in, guessed_out = order[len(order) - positive :] if positive else order[:0], order[:negative]
    right_in, right_out = int(inclusion[guessed_in].sum()), int((~inclusion[guessed_out]).sum())
    return positive + negative, right_in + right_out, right_in


def one_run_audit(
    scores: Tensor | np.ndarray,
    inclusion: Tensor | np.ndarray,
    delta: float,
    confidence: float = 0.95,
    guesses: Optional[tuple[int, int]] = None,
    k_selection: str = "bonferroni",
) -> dict[str, Any]:
    """The one-run audit's lower bound on epsilon from canary scores (higher: member) and their inclusion.

    Steinke, Nasr and Jagielski (NeurIPS 2023), black-box input-space audit: the attacker guesses IN for the k+
    highest scores and OUT for the k- lowest and abstains on the rest; the bound is the largest epsilon whose
    p-value for the number of right guesses is below 1 - ``confidence`` (Theorem 5.2).

    How k+ and k- are chosen. In the paper's Algorithm 1 they are parameters of the auditor, fixed before the
    scores are seen, and the theorem's confidence holds for counts fixed so: ``guesses`` = (k+, k-) is exactly that.
    Without ``guesses`` the audit sweeps k+ = k- = k over :data:`AUDIT_GUESS_GRID` (k <= m/2), as a sweep over the
    number of guesses does, and keeps the best bound; a k picked after seeing the scores is a multiple test:

    * ``k_selection="bonferroni"`` (default): each k is tried at confidence 1 - (1 - ``confidence``) / (number
      tried), so that the best of them keeps ``confidence`` (the union bound; DeepMind's ``jax_privacy.auditing``,
      from the paper's authors' group, corrects its one-run audit over thresholds the same way by default).
    * ``k_selection="uncorrected"``: each k at ``confidence`` and the best reported, the bound of a sweep read
      off at its best point. It is the less conservative and not a ``confidence`` bound: on scores independent
      of inclusion it is above 0 in 8.5-11% of seeds at 95% (measured, m = 200 and 500 canaries; the corrected
      one: 1-3.5%), so it is an option for comparison with such sweeps, never the default.

    Returns the bound with the counts it came from (m, k+, k-, r, v), the selection and every tried k's counts.
    """
    values = np.asarray(scores.detach().cpu().double() if isinstance(scores, Tensor) else scores, dtype=np.float64)
    included = np.asarray(inclusion.detach().cpu() if isinstance(inclusion, Tensor) else inclusion).astype(bool)
    values, included = values.ravel(), included.ravel()
    if values.shape != included.shape:
        raise ValueError(f"the audit needs one inclusion bit per score, got {values.shape} and {included.shape}")
    if not np.isfinite(values).all():
        raise ValueError("audit scores must be finite (an attack produced NaN or infinity)")
    canaries = len(values)
    if guesses is not None:
        positive, negative = guesses
        if positive < 0 or negative < 0 or positive + negative > canaries:
            raise ValueError(f"k+ and k- must be >= 0 with k+ + k- <= {canaries} canaries, got {guesses}")
        choices, k_selection = [(int(positive), int(negative))], "fixed"
    elif k_selection not in AUDIT_K_SELECTIONS:
        raise ValueError(f"k_selection must be one of {AUDIT_K_SELECTIONS}, got {k_selection!r}")
    else:
        choices = [(k, k) for k in AUDIT_GUESS_GRID if 2 * k <= canaries] or [(canaries // 2, canaries // 2)]
    corrected = confidence if k_selection == "uncorrected" else 1.0 - (1.0 - confidence) / len(choices)
    tried = []
    for positive, negative in choices:
        made, right, right_in = _guess_counts(values, included, positive, negative)
        epsilon = one_run_audit_epsilon(canaries, made, right, delta, corrected) if made else 0.0
        tried.append(
            {"k_plus": positive, "k_minus": negative, "guesses": made, "correct": right, "correct_in": right_in}
            | {"epsilon": epsilon}
        )
    best = max(tried, key=lambda entry: entry["epsilon"])
    return {
        "epsilon": best["epsilon"],
        "canaries": canaries,
        "included": int(included.sum()),
        "k_plus": best["k_plus"],
        "k_minus": best["k_minus"],
        "guesses": best["guesses"],
        "correct": best["correct"],
        "delta": delta,
        "confidence": confidence,
        "k_selection": k_selection,
        "confidence_per_k": corrected,
        "tried": tried,
    }


def canary_report(
    scores: Tensor, inclusion: Tensor, delta: float, confidence: float = 0.95
) -> tuple[dict[str, float], dict[str, Any], list[str]]:
    """(metrics, details, warnings) of an attack over the canaries alone: AUC, TPR at 1% / 0.1% FPR, audit bound.

    Metric names carry a ``canary_`` prefix so that they sit beside the population metrics in one entry; the
    details keep the achieved FPRs, Clopper-Pearson intervals and the audit's counts.
    """
    metrics, details, warnings = membership_report(scores, inclusion, None, confidence)
    audit = one_run_audit(scores, inclusion, delta, confidence)
    metrics = {f"canary_{name}": value for name, value in metrics.items()}
    metrics["canary_audit_epsilon"] = audit["epsilon"]
    details = {f"canary_{name}": value for name, value in details.items()}
    details["canary_audit"] = audit
    return metrics, details, [f"canaries: {warning}" for warning in warnings]


def membership_slices(scores: Tensor, is_member: Tensor, groups: Tensor) -> dict[str, dict[str, Any]]:
    """The attack per slice (``groups``: one slice key per query, e.g. its class or whether the target got it right).

    Each slice: member and non-member counts, and where it has both, the AUC with DeLong's interval and the TPR at
    1% FPR within the slice -- the records a population average hides (Aerni et al. 2024).
    """
    values, target = scores.detach().flatten(), is_member.detach().flatten()
    keys = groups.detach().flatten()
    slices = {}
    for key in torch.unique(keys).tolist():
        chosen = keys == key
        members, nonmembers = int((target[chosen] == 1).sum()), int((target[chosen] == 0).sum())
        entry: dict[str, Any] = {"members": members, "nonmembers": nonmembers}
        if members and nonmembers:
            auc, low, high = delong_interval(values[chosen], target[chosen])
            fpr, tpr, thresholds = exact_roc(values[chosen], target[chosen])
            entry.update(auc=auc, auc_interval=[low, high], tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, thresholds, 0.01)[0])
        slices[str(key)] = entry
    return slices
