"""Audit saved scores: membership metrics from per-example outputs a user stored, with no model at all.

The file is a NumPy ``.npz`` (read with ``allow_pickle=False``: nothing in it runs) holding:

============================ ======================== ===============================================================
key                          shape, dtype             what
============================ ======================== ===============================================================
``membership``               (N,) bool or 0/1 int     1: the target trained on example i (required)
``logits``                   (N, C) float             the target's logits on example i (this or ``losses``)
``losses``                   (N,) float               the target's cross-entropy loss on example i (this or ``logits``)
``labels``                   (N,) int in [0, C)       the true class (required with ``logits``)
``threshold``                () float                 optional: the loss attack's decision threshold on log p_y
                                                      (else: the best on these scores, an optimistic accuracy)
``reference_logits``         (R, N, C) float          optional: R reference models' logits on the same examples
``reference_in``             (R, N) bool              with ``reference_logits``: reference r trained on example i
============================ ======================== ===============================================================

Scored by the same functions as the full audit: the loss attack (log p_y, Yeom et al.), and with reference models
LiRA (Carlini et al. 2022): offline (a z-score against the OUT references) and, when every example has IN and OUT
references, online (per-example IN/OUT Gaussians). RMIA needs population samples beside the targets and is not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Normal

from bench.attacks.lira import gaussian_statistics
from bench.attacks.membership_inference import (
    AUDIT_DELTA,
    best_threshold,
    logit_confidence,
    true_class_log_probability,
)
from bench.errors import BenchError, regular_file
from bench.metrics.membership import DIRECTIONS, epsilon_lower_bound, membership_report, roc_curve

KEYS = ("membership", "logits", "losses", "labels", "threshold", "reference_logits", "reference_in")


def load_scores(path: str) -> dict[str, Tensor]:
    """The saved scores, checked: every problem (a missing key, NaN, mismatched lengths, a wrong dtype) is one line."""
    file = regular_file(path, "--scores")
    try:
        data = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise BenchError(f"--scores {path}: not a NumPy .npz file ({str(error).splitlines()[0][:200]})") from None
    if not hasattr(data, "files"):
        raise BenchError(f"--scores {path}: expected a .npz archive of named arrays, got a single array")
    unknown = sorted(set(data.files) - set(KEYS))
    if unknown:
        raise BenchError(
            f"--scores {path}: unknown key(s) {unknown}; the keys are {list(KEYS)} (docs/auditing_a_model.md)"
        )

    def fail(message: str):
        raise BenchError(f"--scores {path}: {message}")

    def get(key: str, ndim: int, kinds: str) -> Optional[np.ndarray]:
        try:
            value = data[key] if key in data.files else None
        except ValueError as error:  # an object array: refused by allow_pickle=False
            fail(f"{key}: {str(error).splitlines()[0]}")
        if value is None:
            return None
        if value.dtype.kind not in kinds or value.ndim != ndim:
            fail(f"{key} must be {ndim}-D of kind {kinds!r} (numpy dtype kinds), got {value.dtype} {value.shape}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            fail(f"{key} holds {int((~np.isfinite(value)).sum())} NaN or infinite value(s)")
        return value

    arrays = {
        key: get(key, ndim, kinds)
        for key, ndim, kinds in (
            ("membership", 1, "biu"),
            ("logits", 2, "f"),
            ("losses", 1, "f"),
            ("labels", 1, "iu"),
            ("threshold", 0, "f"),
            ("reference_logits", 3, "f"),
            ("reference_in", 2, "bui"),
        )
    }
    problem = _membership_problem(arrays["membership"]) or _consistency_problem(**arrays)
    if problem is not None:
        fail(problem)
    membership, logits, losses, labels = (arrays[k] for k in ("membership", "logits", "losses", "labels"))
    threshold, references, inside = (arrays[k] for k in ("threshold", "reference_logits", "reference_in"))
    scores = {"membership": torch.as_tensor(membership.astype(np.int64))}
    for key, value in (
        ("logits", logits),
        ("losses", losses),
        ("threshold", threshold),
        ("reference_logits", references),
    ):
        if value is not None:
            scores[key] = torch.as_tensor(value.astype(np.float64))
    if labels is not None:
        scores["labels"] = torch.as_tensor(labels.astype(np.int64))
    if inside is not None:
        scores["reference_in"] = torch.as_tensor(inside.astype(bool))
    return scores


def _membership_problem(membership: Optional[np.ndarray]) -> Optional[str]:
    if membership is None:
        return "no 'membership' array (1: the target trained on the example)"
    if not np.isin(membership, (0, 1)).all():
        return "membership must be 0 or 1"
    if membership.sum() == 0 or membership.sum() == len(membership):
        return "membership needs both members and non-members"
    return None


def _consistency_problem(
    membership, logits, losses, labels, threshold, reference_logits, reference_in
) -> Optional[str]:
    """What makes the arrays disagree with one another (lengths, classes, pairs that go together), or None."""
    count = len(membership)
    if (logits is None) == (losses is None):
        return "give exactly one of 'logits' (N, C) or 'losses' (N,)"
    for key, value in (("logits", logits), ("losses", losses), ("labels", labels)):
        if value is not None and len(value) != count:
            return f"{key} has {len(value)} entries, membership {count}"
    if logits is not None and labels is None:
        return "'logits' need 'labels' (the true class of each example)"
    classes = logits.shape[1] if logits is not None else None
    if labels is not None and classes is not None and (labels.min() < 0 or labels.max() >= classes):
        return f"labels must lie in [0, {classes}), got [{labels.min()}, {labels.max()}]"
    if losses is not None and (losses < 0).any():
        return "losses are cross-entropies: they cannot be negative"
    if (reference_logits is None) != (reference_in is None):
        return "'reference_logits' and 'reference_in' go together"
    if reference_logits is None:
        return None
    if logits is None:
        return "reference models need the target's 'logits' and 'labels' (LiRA compares logit confidences)"
    if reference_logits.shape[1:] != logits.shape:
        return f"reference_logits must be (R, {count}, {classes}), got {reference_logits.shape}"
    if reference_in.shape != reference_logits.shape[:2] or not np.isin(reference_in, (0, 1)).all():
        return f"reference_in must be a 0/1 matrix of shape {reference_logits.shape[:2]}, got {reference_in.shape}"
    return None


def _report(name: str, scores: Tensor, is_member: Tensor, threshold: float, seed: int, details: dict) -> dict:
    """A privacy entry as the harness writes one (:meth:`MembershipInference.run`'s metrics and details)."""
    metrics, report, warnings = membership_report(scores, is_member, threshold)
    audit = epsilon_lower_bound(scores, is_member, AUDIT_DELTA, torch.Generator().manual_seed(seed))
    metrics["empirical_epsilon"] = audit["epsilon"]
    details = {
        **details,
        **report,
        "empirical_epsilon": audit,
        "members": int(is_member.sum()),
        "nonmembers": int((1 - is_member).sum()),
        "threshold": threshold,
        "roc": roc_curve(scores, is_member),
        "warnings": warnings,
    }
    return {
        "attack": name,
        "threat_model": "black_box_outputs",
        "role": "adversary",
        "metrics": metrics,
        "directions": {key: DIRECTIONS[key] for key in metrics if key in DIRECTIONS},
        "primary_metric": "attack_accuracy",
        "details": details,
        "warnings": warnings,
    }


def score_saved(scores: dict[str, Tensor], seed: int = 0) -> list[dict[str, Any]]:
    """Privacy entries of the attacks the saved scores allow (see the module docstring)."""
    is_member = scores["membership"]
    if "logits" in scores:
        loss_scores = true_class_log_probability(scores["logits"], scores["labels"])
    else:
        loss_scores = -scores["losses"]  # log p_y = -cross-entropy
    given = "threshold" in scores
    threshold = float(scores["threshold"]) if given else best_threshold(loss_scores, is_member)
    entries = [
        _report(
            "loss_threshold",
            loss_scores,
            is_member,
            threshold,
            seed,
            {"statistic": "loss", "threshold_from": "the file" if given else "these scores (optimistic accuracy)"},
        )
    ]
    if "reference_logits" in scores:
        labels, inside = scores["labels"], scores["reference_in"]
        count = len(scores["reference_logits"])
        phi = logit_confidence(scores["reference_logits"], labels.expand(count, -1))
        observed = logit_confidence(scores["logits"], labels)
        if (~inside).sum(0).min() >= 1:
            mean, std = gaussian_statistics(phi, ~inside, True)
            offline = (observed - mean) / std
            entries.append(
                _report(
                    "lira", offline, is_member, best_threshold(offline, is_member), seed, {"reference_models": count}
                )
            )
        if inside.sum(0).min() >= 1 and (~inside).sum(0).min() >= 1:
            mu_in, sigma_in = gaussian_statistics(phi, inside, True)
            mu_out, sigma_out = gaussian_statistics(phi, ~inside, True)
            online = Normal(mu_in, sigma_in).log_prob(observed) - Normal(mu_out, sigma_out).log_prob(observed)
            entries.append(_report("lira_online", online, is_member, 0.0, seed, {"reference_models": count}))
    return entries


def describe_file(path: str) -> dict[str, Any]:
    from bench.audit.external import file_sha256

    return {"scores": str(Path(path).resolve()), "scores_sha256": file_sha256(path)}
