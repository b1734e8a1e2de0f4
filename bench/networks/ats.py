"""The networks of the ATS paper (Gao et al., CVPR 2021, section 5.1): ResNet-20 and the 8-layer ConvNet.

Both take images in [0, 1] (normalising with the data spec as their first layer), adapt to any
channel count and image size and use batch-norm, as the gradient-inversion literature's targets do.
No in-place activations: participants' gradients are computed with ``torch.func`` transforms. Their
names (``convnet``, ``resnet20``) are given in :mod:`bench.networks.registry`; ``width=None`` is the paper's width.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.networks.layers import Normalize
from bench.spec import DataSpec


def _checked_width(width: Optional[int], paper_width: int) -> int:
    """The base width: the paper's when None, else a positive number of channels."""
    if width is None:
        return paper_width
    if width < 1:
        raise BenchError(f"width must be a positive number of channels, got {width}")
    return width


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class ConvNet(nn.Module):
    """The 8-layer ConvNet of Geiping et al. used by ATS: eight conv-BN-ReLU layers of widths
    w, 2w, 2w, 4w, 4w, 4w, 4w, 4w, 2x2 max-pools after the 4th, 6th and 8th (while the map is at least
    2 pixels wide) and one linear layer on the flattened map (not pooled: as in Geiping et al., the last
    layer sees where features are, which is much of what its gradient leaks)."""

    PAPER_WIDTH = 64

    def __init__(self, spec: DataSpec, width: Optional[int] = None) -> None:
        super().__init__()
        width = _checked_width(width, self.PAPER_WIDTH)
        channels = spec.image_shape[0]
        widths = [width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = [Normalize(spec.mean, spec.std)]
        size = min(spec.image_shape[1:])
        for index, out_channels in enumerate(widths):
            layers += _conv_bn_relu(channels, out_channels)
            channels = out_channels
            if index in (3, 5, 7) and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features.eval()(torch.zeros(1, *spec.image_shape)).numel()
        self.features.train()
        self.fc = nn.Linear(flat, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))

    def as_sequential(self) -> nn.Sequential:
        """This network's forward as one ``nn.Sequential`` of its own layers (same parameter names): what
        :func:`bench.batching.grouped_networks.grouped_network` runs many copies of as one network."""
        return nn.Sequential(OrderedDict(features=self.features, flatten=nn.Flatten(), fc=self.fc))


class BasicBlock(nn.Module):
    """He et al.'s two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for small images (He et al., section 4.2): a 3x3 stem, three stages of three basic
    blocks (widths w, 2w, 4w; stride 2 at the second and third), global average pooling, one linear layer."""

    PAPER_WIDTH = 16

    def __init__(self, spec: DataSpec, width: Optional[int] = None) -> None:
        super().__init__()
        width = _checked_width(width, self.PAPER_WIDTH)
        channels = spec.image_shape[0]
        self.stem = nn.Sequential(Normalize(spec.mean, spec.std), *_conv_bn_relu(channels, width))
        blocks, in_channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for block in range(3):
                blocks.append(BasicBlock(in_channels, out_channels, stride=2 if stage > 0 and block == 0 else 1))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
