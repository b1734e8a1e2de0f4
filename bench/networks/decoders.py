"""Decoders that map released tensors back to images: the inversion attacker's and RAN's.

``mirror_decoder`` turns an encoder upside down layer by layer (convolutions become transposed
convolutions, max-pooling becomes up-sampling, linear layers are transposed), which RAN calls
the worst case for the defender: an attacker who knows the encoder's architecture.
``upsampling_decoder`` needs only the released tensor's shape and so attacks any method.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.networks.layers import Normalize

_SHAPE_PRESERVING = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.Identity,
    Normalize,
)


def _record_shapes(encoder: nn.Sequential, image_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Input shape (without batch) of every layer, and the output shape last."""
    shapes = []
    x = torch.zeros(2, *image_shape)
    # each layer's own mode: `encoder` may be a fresh Sequential around a deployed client's layers in eval mode
    modes = [(layer, layer.training) for layer in encoder.modules()]
    encoder.eval()
    with torch.no_grad():
        for layer in encoder:
            shapes.append(tuple(x.shape[1:]))
            x = layer(x)
    for layer, was_training in modes:
        layer.training = was_training
    shapes.append(tuple(x.shape[1:]))
    return shapes


def _flatten_sequential(module: nn.Sequential) -> nn.Sequential:
    """Nested Sequentials as one flat Sequential of the same layers (e.g. encoder + projection)."""
    layers: list[nn.Module] = []
    for layer in module:
        layers += list(_flatten_sequential(layer)) if isinstance(layer, nn.Sequential) else [layer]
    return nn.Sequential(*layers)


def mirror_decoder(encoder: nn.Module, image_shape: Sequence[int]) -> nn.Sequential:
    """The encoder reversed layer by layer; ends in a sigmoid (images in [0, 1])."""
    if not isinstance(encoder, nn.Sequential):
        raise BenchError(
            f"the mirror decoder needs an nn.Sequential encoder, got {type(encoder).__name__}; use decoder='upsampling'"
        )
    encoder = _flatten_sequential(encoder)
    shapes = _record_shapes(encoder, image_shape)
    inverse: list[nn.Module] = []
    for index in reversed(range(len(encoder))):
        layer, in_shape, out_shape = encoder[index], shapes[index], shapes[index + 1]
        if isinstance(layer, nn.Conv2d):
            stride, kernel, padding = layer.stride, layer.kernel_size, layer.padding
            output_padding = tuple(
                in_shape[1 + d] - ((out_shape[1 + d] - 1) * stride[d] - 2 * padding[d] + kernel[d]) for d in range(2)
            )
            inverse.append(
                nn.ConvTranspose2d(layer.out_channels, layer.in_channels, kernel, stride, padding, output_padding)
            )
            inverse.append(("activation", in_shape[0]))  # placeholder, resolved below
        elif isinstance(layer, nn.Linear):
            inverse.append(nn.Linear(layer.out_features, layer.in_features))
            inverse.append(("activation", None))
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            inverse.append(nn.Upsample(size=tuple(in_shape[1:]), mode="nearest"))
        elif isinstance(layer, nn.Flatten):
            inverse.append(nn.Unflatten(1, tuple(in_shape)))
        elif isinstance(layer, _SHAPE_PRESERVING):
            continue  # non-linearities and normalisation are re-placed after each inverted layer
        else:
            raise BenchError(f"the mirror decoder cannot invert a {type(layer).__name__}; use decoder='upsampling'")
    # every inverted linear map but the last is followed by BN + ReLU; the last by a sigmoid
    last = max(i for i, item in enumerate(inverse) if isinstance(item, tuple))
    layers: list[nn.Module] = []
    for i, item in enumerate(inverse):
        if not isinstance(item, tuple):
            layers.append(item)
        elif i == last:
            layers.append(nn.Sigmoid())
        else:
            channels = item[1]
            layers += ([nn.BatchNorm2d(channels)] if channels else []) + [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def upsampling_decoder(released_shape: Sequence[int], image_shape: Sequence[int], width: int = 64) -> nn.Sequential:
    """A generic decoder from any released tensor shape.

    A linear map to a coarse grid, then 2x up-sampling convolutions.
    """
    channels, height, width_px = image_shape
    stages = max(0, int(math.log2(max(1, min(height, width_px) // 4))))
    coarse = (math.ceil(height / 2**stages), math.ceil(width_px / 2**stages))
    layers: list[nn.Module] = [
        nn.Flatten(),
        nn.Linear(int(torch.Size(released_shape).numel()), width * coarse[0] * coarse[1]),
        nn.ReLU(inplace=True),
        nn.Unflatten(1, (width, *coarse)),
    ]
    for _ in range(stages):
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    layers += [
        nn.Upsample(size=(height, width_px), mode="nearest"),
        nn.Conv2d(width, channels, 3, padding=1),
        nn.Sigmoid(),
    ]
    return nn.Sequential(*layers)


def released_as_real(released: Tensor) -> Tensor:
    """Complex releases become real tensors with real and imaginary parts as channels."""
    if released.is_complex():
        return torch.cat([released.real, released.imag], dim=1)
    return released
