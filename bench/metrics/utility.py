"""The task's loss and accuracy, chosen by the data spec's ``task`` (see :mod:`bench.spec`).

multiclass: cross-entropy and top-1 accuracy. multilabel: binary cross-entropy with logits on every
attribute, and accuracy per attribute (torchmetrics' ``MultilabelAccuracy``, a 0.5 threshold on the
sigmoid); the utility of a multi-label task is its mean attribute error rate, the mean over attributes
of each attribute's error rate over the test images (Xiang et al., section 4.2: "the average estimation
error rate for all attributes of all facial images").
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy

from bench.spec import DataSpec


def task_loss(logits: Tensor, targets: Tensor, spec: DataSpec, reduction: str = "mean") -> Tensor:
    """Cross-entropy (multiclass) or binary cross-entropy with logits on each attribute (multilabel).

    With ``reduction="none"`` one loss per sample: for attributes, the mean over the sample's attributes.
    """
    if not spec.multilabel:
        return F.cross_entropy(logits, targets, reduction=reduction)
    per_attribute = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    per_sample = per_attribute.mean(dim=1)
    return per_sample if reduction == "none" else per_sample.sum() if reduction == "sum" else per_sample.mean()


def accuracy_metric(spec: DataSpec, per_label: bool = False, **kwargs) -> Metric:
    """Top-1 accuracy (multiclass) or the mean of the per-attribute accuracies (multilabel).

    ``per_label`` keeps one accuracy per attribute (multilabel only). Feed it :func:`metric_inputs`.
    Every attribute is scored on the same images, so the macro mean is also the accuracy over all
    (image, attribute) entries.
    """
    if spec.multilabel:
        return MultilabelAccuracy(spec.num_classes, average=None if per_label else "macro", **kwargs)
    if per_label:
        raise ValueError("per_label accuracies are for multi-label tasks")
    return MulticlassAccuracy(spec.num_classes, average="micro", **kwargs)


def metric_inputs(logits: Tensor, spec: DataSpec) -> Tensor:
    """What :func:`accuracy_metric` is fed: logits (multiclass) or probabilities (multilabel).

    torchmetrics applies the sigmoid itself only when some value lies outside [0, 1]; a batch of logits
    that all happen to lie inside [0, 1] would be thresholded as probabilities, so it is applied here.
    """
    return logits.sigmoid() if spec.multilabel else logits


def predictions_correct(logits: Tensor, targets: Tensor, spec: DataSpec) -> Tensor:
    """Per-sample correctness as floats: 1/0 for the top-1 class, the fraction of attributes right for multilabel."""
    if spec.multilabel:
        return ((logits > 0) == targets.bool()).to(torch.float64).mean(dim=1)
    return (logits.argmax(dim=1) == targets).to(torch.float64)


def utility_from_batches(
    batches, spec: DataSpec, label_names: Optional[Sequence[str]] = None, device: Optional[torch.device] = None
) -> dict[str, float]:
    """The record's utility from (logits, targets) batches.

    multiclass: ``{"accuracy": top-1}``. multilabel: ``{"accuracy": 1 - mean attribute error,
    "mean_attribute_error": ..., "attribute_accuracy/<name>": ... for each attribute}``: ``accuracy``
    is always the higher-is-better number the leaderboard's utility column shows.
    """
    metric = accuracy_metric(spec, per_label=spec.multilabel, sync_on_compute=False)
    if device is not None:
        metric = metric.to(device)
    for logits, targets in batches:
        metric.update(metric_inputs(logits, spec), targets)
    if not spec.multilabel:
        return {"accuracy": metric.compute().item()}
    per_attribute = metric.compute().double()
    names = list(label_names) if label_names is not None else [str(i) for i in range(spec.num_classes)]
    if len(names) != spec.num_classes:
        raise ValueError(f"{len(names)} label names for {spec.num_classes} attributes")
    mean_error = (1 - per_attribute).mean().item()
    utility = {"accuracy": 1 - mean_error, "mean_attribute_error": mean_error}
    utility.update({f"attribute_accuracy/{name}": value for name, value in zip(names, per_attribute.tolist())})
    return utility
