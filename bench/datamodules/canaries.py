"""Canaries: the most exposed records, each included in the target's training set with probability 1/2.

Aerni, Zhang and Tramer (CCS 2024) show that population-level membership metrics understate the leakage of the
records that leak most; canaries stand in for them. Steinke, Nasr and Jagielski (NeurIPS 2023) audit a single
training run with canaries included independently with probability 1/2 (:func:`bench.metrics.membership.one_run_audit`).

Two kinds:

- ``mislabelled``: candidates drawn at random from the canary pool, each given a wrong label drawn uniformly from the
  other classes;
- ``atypical``: the candidates an atypicality score ranks highest (e.g. the loss of reference models trained on the
  attacker's data), computed by the caller without access to inclusion.

The order of operations is the guarantee that nothing the attacker sees depends on inclusion: candidates and their
labels are fixed first, from their own generator; inclusion is drawn afterwards from a second, independent generator
and lives only in :attr:`CanarySet.inclusion`. :meth:`CanarySet.attacker_view` is everything an attacker may use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from bench.errors import BenchError

CANARY_KINDS = ("mislabelled", "atypical")
#: added to the run's seed for the generator of candidates and of inclusion (two streams: inclusion never shares
#: random numbers with anything the attacker sees)
_CANDIDATE_STREAM, _INCLUSION_STREAM = 7919, 104729


@dataclass(frozen=True)
class CanarySet:
    """Canary candidates (indices into the canary pool, the labels they are trained and queried with) and inclusion."""

    kind: str
    indices: Tensor  # long, into the canary pool
    labels: Tensor  # the label each candidate is trained with when included and queried with (wrong: mislabelled)
    original_labels: Tensor  # the pool's labels
    inclusion: Tensor  # bool, Bernoulli(1/2) per candidate: True = in the target's training set
    seed: int

    def attacker_view(self) -> dict[str, Tensor]:
        """What an attacker knows of the canaries: which they are and their labels, never their inclusion."""
        return {"indices": self.indices.clone(), "labels": self.labels.clone()}

    def included_indices(self) -> Tensor:
        """The canary-pool indices that join the target's training set."""
        return self.indices[self.inclusion]

    def describe(self) -> dict[str, Any]:
        """The record's view: kind, count, seed and the inclusion bits (recorded so that any audit can be redone)."""
        return {
            "kind": self.kind,
            "count": int(len(self.indices)),
            "included": int(self.inclusion.sum()),
            "seed": self.seed,
            "indices": self.indices.tolist(),
            "labels": self.labels.tolist(),
            "inclusion": self.inclusion.int().tolist(),
        }


def check_canary_request(
    count: int, kind: str, pool_size: int, task: str = "multiclass", lowest_fpr: Optional[float] = 0.001
) -> list[str]:
    """Refuse a canary request that cannot work, before any training; returns warnings for what it cannot resolve.

    Raises :class:`BenchError` (one line) for a count outside [2, pool size], an unknown kind or a multi-label task
    (a wrong label, and inclusion of one image per attribute vector, are not defined there). An FPR the expected
    number of excluded canaries (count / 2) cannot resolve is a warning: the TPR is then read at the FPR achieved.
    """
    if kind not in CANARY_KINDS:
        raise BenchError(f"canary kind must be one of {list(CANARY_KINDS)}, got {kind!r}")
    if task != "multiclass":
        raise BenchError(f"canaries need a multiclass dataset (one label per image); this one is {task}")
    if count < 2:
        raise BenchError(f"canaries: need at least 2 candidates (some included, some not), got {count}")
    if count > pool_size:
        raise BenchError(f"canaries: {count} candidates asked for, but the canary pool holds only {pool_size}")
    warnings = []
    if lowest_fpr is not None and count / 2 < math.ceil(1 / lowest_fpr):
        warnings.append(
            f"canaries: about {count // 2} excluded canaries cannot resolve an FPR of {100 * lowest_fpr:g}% "
            f"(it needs at least {math.ceil(1 / lowest_fpr):,}, i.e. {2 * math.ceil(1 / lowest_fpr):,} canaries)"
        )
    return warnings


def draw_canaries(
    labels: Tensor,
    count: int,
    kind: str,
    num_classes: int,
    seed: int,
    atypicality: Optional[Tensor] = None,
) -> CanarySet:
    """Pick ``count`` candidates from a canary pool with ``labels`` and draw each one's inclusion (probability 1/2).

    ``atypicality`` (kind ``atypical``): one score per pool example, higher = more atypical; the top ``count`` are
    the candidates (ties broken by a seeded shuffle). It must be computed without the inclusion this function draws.
    """
    labels = labels.flatten().long()
    check_canary_request(count, kind, len(labels), lowest_fpr=None)
    if num_classes < 2:
        raise BenchError(f"canaries need at least 2 classes, got {num_classes}")
    candidates = torch.Generator().manual_seed(seed + _CANDIDATE_STREAM)
    order = torch.randperm(len(labels), generator=candidates)
    if kind == "atypical":
        if atypicality is None or atypicality.numel() != len(labels):
            raise BenchError("atypical canaries need one atypicality score per canary-pool example")
        shuffled = atypicality.flatten().double()[order]
        indices = order[torch.argsort(shuffled, descending=True, stable=True)[:count]]
        canary_labels = labels[indices].clone()
    else:
        indices = order[:count]
        # a wrong label uniformly among the other classes: original + 1 + uniform{0..C-2} (mod C)
        shift = 1 + torch.randint(num_classes - 1, (count,), generator=candidates)
        canary_labels = (labels[indices] + shift) % num_classes
    inclusion_stream = torch.Generator().manual_seed(seed + _INCLUSION_STREAM)
    inclusion = torch.rand(count, generator=inclusion_stream) < 0.5
    return CanarySet(kind, indices, canary_labels, labels[indices].clone(), inclusion, seed)


def nearest_mean_atypicality(
    reference_images: Tensor, reference_labels: Tensor, images: Tensor, labels: Tensor
) -> Tensor:
    """How badly a reference model fitted on the attacker's data fits each example (higher: more atypical).

    The reference model is the nearest-class-mean classifier of ``reference_images`` (the attacker pool); its
    margin loss on an example is the distance to the example's own class mean minus the distance to the nearest
    other class mean. It sees no training-set inclusion, so candidates chosen by it are chosen blind to inclusion.
    """
    flat_reference, flat = reference_images.flatten(1).double(), images.flatten(1).double()
    classes = int(max(reference_labels.max(), labels.max())) + 1
    means = torch.stack(
        [
            flat_reference[reference_labels == c].mean(0) if (reference_labels == c).any() else flat_reference.mean(0)
            for c in range(classes)
        ]
    )
    distances = torch.cdist(flat, means)
    own = distances.gather(1, labels.long()[:, None]).squeeze(1)
    others = distances.scatter(1, labels.long()[:, None], float("inf")).min(1).values
    return own - others
