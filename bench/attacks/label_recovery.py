"""Label recovery from a shared gradient, for gradient inversion: iDLG for distinct labels, counts with repeats."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.errors import BenchError


def _last_layer_rows(gradients: dict[str, Tensor], num_classes: int) -> Tensor:
    """(A, classes) row sums of the last layer's weight gradient: (1/B) sum_i (p_ic - y_ic) sum(h_i)."""
    last = [g for g in gradients.values() if g.ndim == 3 and g.shape[1] == num_classes]
    if not last:
        raise BenchError(
            "cannot recover labels: no (classes, features) weight gradient in the shared gradient; "
            "give the labels instead (labels: given)"
        )
    return last[-1].sum(-1)


def recover_labels(gradients: dict[str, Tensor], num_classes: int, batch_size: int) -> Tensor:
    """iDLG: the true class's row of the last layer's weight gradient is the only negative one (inputs to the
    last layer are non-negative after ReLU and pooling). For a batch, the ``batch_size`` most negative rows
    (distinct labels assumed: :func:`recover_label_counts` allows repeats). Returns (A, batch_size) labels."""
    row_sums = _last_layer_rows(gradients, num_classes)
    return row_sums.topk(batch_size, dim=1, largest=False).indices.sort(dim=1).values


def recover_label_counts(gradients: dict[str, Tensor], num_classes: int, batch_size: int) -> Tensor:
    """Labels with repeats from the last layer's gradient, by counts (B = ``batch_size``). Returns (A, B), sorted.

    With a bias on the last layer (every ATS network): its gradient under the batch-mean cross-entropy is
    g_c = p_c - n_c / B, p_c the batch's mean softmax output for class c, n_c the count of label c (Geng et al.,
    "Towards general deep leakage in federated learning", 2021, count by n_c = B (p_c - g_c)). Each sample of
    class c lowers g_c by exactly 1/B, so labels are taken greedily: B times, the class with the smallest
    g_c + (taken so far) / B. Exact when the p_c differ by less than 1/B (any untrained network).
    Without a bias: Wainakh et al.'s LLG ("User-level label leakage from gradients in federated learning",
    PETS 2022) on the weight rows s_c = (1/B) sum_i (p_ic - y_ic) |h_i|: classes with s_c < 0 once each, the
    impact of a sample estimated as m = (1/B) sum_{s_c < 0} s_c, the rest greedily by the smallest s_c - m k_c.
    """
    biases = [g for g in gradients.values() if g.ndim == 2 and g.shape[1] == num_classes]
    if biases:
        scores, impact, negative_first = biases[-1].double().clone(), None, False
    else:
        scores, negative_first = _last_layer_rows(gradients, num_classes).double().clone(), True
    out = torch.empty(scores.shape[0], batch_size, dtype=torch.long, device=scores.device)
    for attack, s in enumerate(scores):
        taken: list[int] = []
        if negative_first:
            negative = (s < 0).nonzero().flatten()
            negative = negative[s[negative].argsort()[:batch_size]]
            impact = -(s[s < 0].sum() / batch_size).abs().clamp_min(1e-12)
            taken = negative.tolist()
            s[negative] -= impact
        else:
            impact = torch.tensor(-1.0 / batch_size, dtype=s.dtype)
        while len(taken) < batch_size:
            c = int(s.argmin())
            taken.append(c)
            s[c] -= impact
        out[attack] = torch.tensor(sorted(taken), device=scores.device)
    return out
