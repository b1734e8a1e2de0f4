"""What a method costs: parameters, bytes on the wire, client-side compute."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Total and nonzero parameters; weights pruned with ``torch.nn.utils.prune`` count as zero.

    Pruning keeps the dense ``<name>_orig`` parameter and a ``<name>_mask`` buffer, so the
    effective weight is their product.
    """
    total = nonzero = 0
    for owner in module.modules():
        for name, parameter in owner.named_parameters(recurse=False):
            effective = parameter.detach()
            mask = getattr(owner, name[: -len("_orig")] + "_mask", None) if name.endswith("_orig") else None
            if isinstance(mask, Tensor):
                effective = effective * mask
            total += parameter.numel()
            nonzero += int(torch.count_nonzero(effective))
    return {"parameters": total, "nonzero_parameters": nonzero}


def released_bytes_per_sample(released: Tensor) -> int:
    """Bytes one sample's released tensor takes on the wire, at its own dtype."""
    return int(released[0].numel() * released.element_size())


@torch.no_grad()
def client_flops_per_sample(client: Callable[[Tensor], Tensor], sample: Tensor) -> int:
    """Floating-point operations of the client's computation on one sample (torch's FLOP counter)."""
    counter = FlopCounterMode(display=False)
    with counter:
        client(sample[:1])
    return int(counter.get_total_flops())
