"""Split networks: a client-side encoder (convolutions) and a server-side classifier (an MLP).

The plans follow the papers: LeNet-5 for MNIST-sized inputs (RAN, the complex-valued paper), VGG-16
(RAN's CIFAR network) and a shorter VGG for CIFAR-sized ones. Each adapts to the dataset's channels,
image size and class count through a :class:`~bench.spec.DataSpec`. The networks' names are given in
:mod:`bench.networks.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from bench.errors import BenchError
from bench.networks.layers import Normalize
from bench.spec import DataSpec

POOL = "M"


def conv_encoder(spec: DataSpec, plan: Sequence[int | str], kernel_size: int = 3) -> nn.Sequential:
    """Normalize, then conv-BN-ReLU blocks (ints: output channels) and 2x2 max-pools ("M")."""
    channels, height, width = spec.image_shape
    poolings = sum(1 for step in plan if step == POOL)
    if min(height, width) < 2**poolings:
        raise BenchError(
            f"a {height}x{width} image is too small for an encoder with {poolings} 2x2 poolings; "
            f"pick a network for small inputs (e.g. --model.network lenet5)"
        )
    layers: list[nn.Module] = [Normalize(spec.mean, spec.std)]
    for step in plan:
        if step == POOL:
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [
                nn.Conv2d(channels, int(step), kernel_size, padding=kernel_size // 2),
                nn.BatchNorm2d(int(step)),
                nn.ReLU(inplace=True),
            ]
            channels = int(step)
    return nn.Sequential(*layers)


def mlp_classifier(
    in_shape: Sequence[int], hidden: Sequence[int], num_classes: int, dropout: float = 0.0
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.Size(in_shape).numel())
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class SplitPlan:
    """An encoder plan (for :func:`conv_encoder`) and the MLP classifier on its features."""

    encoder: tuple[int | str, ...]
    kernel_size: int
    hidden: tuple[int, ...]
    dropout: float = 0.0


#: LeNet-5's widths (two 5x5 convolutions of 6 and 16 channels, 120 -> 84 -> classes) with batch-norm in the
#: encoder (RAN section 2.3)
LENET5 = SplitPlan((6, POOL, 16, POOL), 5, (120, 84))
#: VGG-11's first four blocks (six 3x3 convolutions) and VGG's head scaled to CIFAR: nine weight layers
VGG9 = SplitPlan((64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL), 3, (512, 512), 0.5)
#: VGG-16's thirteen 3x3 convolutions (RAN's network for CIFAR) and the same head: sixteen weight layers
VGG16 = SplitPlan(
    (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL), 3, (512, 512), 0.5
)


def split_network(plan: SplitPlan, spec: DataSpec) -> tuple[nn.Sequential, nn.Sequential]:
    """The (encoder, classifier) pair of ``plan`` adapted to ``spec``."""
    encoder = conv_encoder(spec, plan.encoder, plan.kernel_size)
    with torch.no_grad():
        feature_shape = encoder.eval()(torch.zeros(1, *spec.image_shape)).shape[1:]
    encoder.train()
    return encoder, mlp_classifier(feature_shape, plan.hidden, spec.num_classes, plan.dropout)
