"""Split networks: a client-side encoder (convolutions) and a server-side classifier (an MLP).

The families follow the papers: LeNet for MNIST-sized inputs (RAN, the complex-valued paper)
and a VGG-style encoder for CIFAR-sized ones. Both adapt to the dataset's channels, image size
and class count through a :class:`~bench.spec.DataSpec`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bench.spec import DataSpec
from bench.errors import BenchError
from bench.networks.layers import Normalize

POOL = "M"


def conv_encoder(spec: DataSpec, plan: Sequence[int | str], kernel_size: int = 3) -> nn.Sequential:
    """Normalize, then conv-BN-ReLU blocks (ints: output channels) and 2x2 max-pools ("M")."""
    channels, height, width = spec.image_shape
    poolings = sum(1 for step in plan if step == POOL)
    if min(height, width) < 2**poolings:
        raise BenchError(
            f"a {height}x{width} image is too small for an encoder with {poolings} 2x2 poolings; "
            f"pick a network for small inputs (e.g. --model.network lenet)"
        )
    layers: list[nn.Module] = [Normalize(spec.mean, spec.std)]
    for step in plan:
        if step == POOL:
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, int(step), kernel_size, padding=kernel_size // 2),
                       nn.BatchNorm2d(int(step)), nn.ReLU(inplace=True)]
            channels = int(step)
    return nn.Sequential(*layers)


def mlp_classifier(in_shape: Sequence[int], hidden: Sequence[int], num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.Size(in_shape).numel())
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# name -> (encoder plan, kernel size, classifier hidden widths, dropout)
FAMILIES: dict[str, tuple[list[int | str], int, list[int], float]] = {
    # LeNet-5 widths with batch-norm in the encoder (RAN section 2.3)
    "lenet": ([6, POOL, 16, POOL], 5, [120, 84], 0.0),
    # VGG-style encoder for 32x32 colour images; the MLP is VGG's head scaled to CIFAR
    "vgg": ([64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL], 3, [512, 512], 0.5),
}


def build_split_network(name: str, spec: DataSpec) -> tuple[nn.Sequential, nn.Sequential]:
    """The (encoder, classifier) pair of family ``name`` adapted to ``spec``."""
    if name not in FAMILIES:
        raise BenchError(f"unknown network '{name}'; choose one of {sorted(FAMILIES)}")
    plan, kernel_size, hidden, dropout = FAMILIES[name]
    encoder = conv_encoder(spec, plan, kernel_size)
    with torch.no_grad():
        feature_shape = encoder.eval()(torch.zeros(1, *spec.image_shape)).shape[1:]
    encoder.train()
    return encoder, mlp_classifier(feature_shape, hidden, spec.num_classes, dropout)
