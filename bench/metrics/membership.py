"""Membership-inference metrics: attack accuracy, AUC, TPR at low FPR, and the ROC curve.

Scores are "higher means member". The attack accuracy is the balanced accuracy of the attack's
own decision (score >= threshold) -- the mean of its true-positive and true-negative rates, the
accuracy on a set with as many members as non-members (the paper's "attack accuracy", after
Nasr et al. 2018). AUC and TPR at 1% / 0.1% FPR (Carlini et al. 2022) need no threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc, binary_sensitivity_at_specificity

#: metric -> which way means more privacy (all of them: lower)
DIRECTIONS = {"attack_accuracy": "lower", "auc": "lower", "tpr_at_1pct_fpr": "lower", "tpr_at_0.1pct_fpr": "lower"}


def _ranks(scores: Tensor) -> Tensor:
    """Scores mapped to [0, 1] keeping their order and ties.

    torchmetrics squashes scores outside [0, 1] with a sigmoid, which ties large float32 scores
    (a LiRA z-score of 20 and one of 30 both become 1.0); dense ranks never do.
    """
    _, inverse = torch.unique(scores.double(), return_inverse=True)
    return inverse.double() / max(int(inverse.max()), 1)


def membership_metrics(scores: Tensor, is_member: Tensor, threshold: Optional[float] = None) -> dict[str, float]:
    """Attack accuracy at ``threshold`` (None: no decision, accuracy left out), AUC, TPR at 1% and 0.1% FPR."""
    scores, target = scores.detach().flatten().double().cpu(), is_member.detach().flatten().long().cpu()
    if not (target == 1).any() or not (target == 0).any():
        raise ValueError("membership metrics need both members and non-members")
    ranked = _ranks(scores)
    metrics: dict[str, float] = {}
    if threshold is not None:
        decision = scores >= threshold
        tpr = decision[target == 1].double().mean()
        tnr = (~decision[target == 0]).double().mean()
        metrics["attack_accuracy"] = float((tpr + tnr) / 2)
    metrics["auc"] = float(binary_auroc(ranked, target))
    for name, fpr in (("tpr_at_1pct_fpr", 0.01), ("tpr_at_0.1pct_fpr", 0.001)):
        metrics[name] = float(binary_sensitivity_at_specificity(ranked, target, min_specificity=1 - fpr)[0])
    return metrics


def roc_curve(scores: Tensor, is_member: Tensor, points: int = 101) -> dict[str, list[float]]:
    """The ROC curve at ``points`` FPRs spaced log-uniformly (low FPRs are where attacks differ), for records and plots."""
    fpr, tpr, _ = binary_roc(_ranks(scores.detach().flatten().cpu()), is_member.detach().flatten().long().cpu())
    grid = torch.logspace(-4, 0, points, dtype=torch.float64)
    # the best TPR reachable at FPR <= each grid value: a step function, read off exactly
    index = torch.searchsorted(fpr.double().contiguous(), grid, right=True) - 1
    return {"fpr": grid.tolist(), "tpr": tpr.double()[index.clamp_min(0)].tolist()}


def plot_roc(curves: Mapping[str, Mapping[str, list[float]]], path: str | Path, title: str = "") -> Path:
    """Log-log ROC curves of several attacks (name -> {fpr, tpr}) with the chance diagonal, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for name, curve in curves.items():
        axis.plot(curve["fpr"], [max(t, 1e-5) for t in curve["tpr"]], label=name)
    axis.plot([1e-4, 1], [1e-4, 1], "k--", linewidth=0.8, label="chance")
    axis.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1.05), xlabel="false-positive rate",
             ylabel="true-positive rate", title=title)
    axis.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
