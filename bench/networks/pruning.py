"""Weights pruned with ``torch.nn.utils.prune`` masks: which layers are, what they compute with, how sparse.

Shared by the ADMM pruning callback, the base class (a pruned checkpoint loads into a fresh module)
and the records (per-layer sparsity). A pruned layer keeps its dense ``weight_orig`` and a
``weight_mask`` buffer; the weight it computes with is their product.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import prune


def is_masked(layer: nn.Module) -> bool:
    return hasattr(layer, "weight_mask")


def current_weight(layer: nn.Module) -> Tensor:
    """The trainable dense weight: ``weight_orig`` once pruned (the mask multiplies it in forward)."""
    return layer.weight_orig if is_masked(layer) else layer.weight


def effective_weight(layer: nn.Module) -> Tensor:
    """The weight the layer computes with (``layer.weight`` of a pruned layer is only refreshed by a forward)."""
    return (layer.weight_orig * layer.weight_mask).detach() if is_masked(layer) else layer.weight.detach()


def sparsity(layer: nn.Module) -> float:
    weight = effective_weight(layer)
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def apply_mask(layer: nn.Module, mask: Tensor) -> None:
    """Prune ``layer.weight`` with ``mask``, keeping the parameter at its place in ``_parameters``.

    ``torch.nn.utils.prune`` re-registers the weight as ``weight_orig`` at the end of the layer's
    parameters; optimizers restored from a checkpoint match parameters by position, so a
    resumed run must see the same order as the run that saved it.
    """
    if is_masked(layer):
        layer.weight_mask.copy_(mask)
        return
    order = list(layer._parameters)
    prune.custom_from_mask(layer, "weight", mask)
    for name in order:
        key = "weight_orig" if name == "weight" else name
        layer._parameters[key] = layer._parameters.pop(key)


def restore_pruning(module: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Re-create the pruning masks a checkpoint's ``state_dict`` holds, so that it loads into a fresh ``module``."""
    for key, value in state_dict.items():
        if not key.endswith(".weight_mask"):
            continue
        layer = module.get_submodule(key[: -len(".weight_mask")])
        if not is_masked(layer):
            apply_mask(layer, torch.ones_like(value))


def pruned_layer_sparsity(module: nn.Module) -> dict[str, float]:
    """Fraction of zero weights of every layer pruned with a mask ({} when none is)."""
    return {name: sparsity(layer) for name, layer in module.named_modules() if is_masked(layer)}
