"""Small layers shared by the networks."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, so that networks take images in [0, 1] as every pool serves them."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std
