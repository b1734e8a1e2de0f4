"""The inversion decoder of the complex-valued networks paper: a U-Net (Ronneberger et al.) revised.

Section 4.1 of Xiang et al.: both inversion strategies use a U-Net whose blocks hold six
convolutional layers instead of two. The released feature is first resized to the image's size
(features are often smaller than the image), then runs down and up the U with skip connections;
the number of levels adapts to the image (the original's four below 64x64, fewer for small images).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [
            nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class UNetDecoder(nn.Module):
    """Released tensor (C, h, w) -> image (C', H, W) in [0, 1].

    Args:
        released_shape / image_shape: shapes without the batch dimension.
        width: channels of the first level (doubled at every level down).
        convs_per_block: convolutions per block (the paper's revision: 6; the original U-Net: 2).
        max_levels: levels below the top (the original U-Net's 4); fewer when the image is small.
    """

    def __init__(
        self,
        released_shape: Sequence[int],
        image_shape: Sequence[int],
        width: int = 32,
        convs_per_block: int = 6,
        max_levels: int = 4,
    ) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        self.size = (height, width_px)
        levels = max(0, min(max_levels, int(math.log2(max(1, min(height, width_px) // 4)))))
        widths = [width * 2**level for level in range(levels + 1)]
        self.stem = _block(released_shape[0], widths[0], convs_per_block)
        self.down = nn.ModuleList(_block(widths[level], widths[level + 1], convs_per_block) for level in range(levels))
        self.up = nn.ModuleList(
            _block(widths[level + 1] + widths[level], widths[level], convs_per_block)
            for level in reversed(range(levels))
        )
        self.head = nn.Conv2d(widths[0], channels, 1)

    def forward(self, released: Tensor) -> Tensor:
        f = (
            released
            if tuple(released.shape[-2:]) == self.size
            else F.interpolate(released, size=self.size, mode="bilinear", align_corners=False)
        )
        skips = [self.stem(f)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        f = skips.pop()
        for block in self.up:
            skip = skips.pop()
            f = block(torch.cat([F.interpolate(f, size=skip.shape[-2:], mode="nearest"), skip], dim=1))
        return torch.sigmoid(self.head(f))


def unet_decoder(released_shape: Sequence[int], image_shape: Sequence[int], **kwargs) -> UNetDecoder:
    """A U-Net decoder for released tensors of ``released_shape`` (real; complex ones as 2C channels)."""
    return UNetDecoder(released_shape, image_shape, **kwargs)
