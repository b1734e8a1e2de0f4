"""Networks of compressive learning (Wang et al., AAAI 2024): the measurement, the generator, the classifier.

* the client's Gaussian measurement matrix A (m x n) drawn from a seed, and the measurement y = A x
  (Eq. 1) as a frozen linear layer on the flattened image;
* the server's generator after DeepInverse (Mousavi & Baraniuk 2017): a fixed fully-connected layer
  whose weights are A^T lifts y back to signal space, then convolutions without pooling;
* the classifier, a LeNet variant as in TF-slim (two 5x5 convolutions of 32 and 64 channels with 2x2
  max-pooling, a 1024-unit layer with dropout, the logits), used by DCM and DCMG alike, behind a
  per-pixel batch normalisation (:class:`PixelNorm`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from bench.errors import BenchError
from bench.spec import DataSpec


def measurement_count(rate: float, signal_size: int) -> int:
    """m = round(rate * n) measurements (at least one, at most n)."""
    if not 0.0 < rate <= 1.0:
        raise BenchError(f"measurement_rate m/n must lie in (0, 1], got {rate} (the paper uses 0.05, 0.1 and 0.25)")
    return min(signal_size, max(1, round(rate * signal_size)))


def gaussian_measurement_matrix(m: int, n: int, seed: int) -> Tensor:
    """A Gaussian random A (m x n) with N(0, 1/m) entries, so that E||A x||^2 = ||x||^2.

    The same seed gives the same A.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=generator, dtype=torch.float64).div_(math.sqrt(m)).float()


def frozen_linear(weight: Tensor, bias: Optional[Tensor] = None) -> nn.Linear:
    """A linear layer with the given weight (out x in) and bias that no optimizer updates."""
    # skip_init: no random initialisation, so building one leaves the global RNG (and every later layer's init) alone
    layer = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer.requires_grad_(False)


def measurement_network(weight: Tensor, bias: Optional[Tensor] = None) -> nn.Sequential:
    """The client: flatten the image, then y = weight x + bias.

    Eq. 1 with weight = A; Eq. 5 adds a scale and an offset.

    A plain ``Sequential`` of standard layers, so that the feature-inversion attacker can mirror it.
    """
    return nn.Sequential(nn.Flatten(), frozen_linear(weight, bias))


class Lift(nn.Module):
    """DeepInverse's fixed first layer: x~ = A^T y, reshaped to the image (A^T as a frozen linear layer)."""

    def __init__(self, matrix: Tensor, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        self.transpose = frozen_linear(matrix.T.contiguous())

    def forward(self, y: Tensor) -> Tensor:
        return self.transpose(y.flatten(1)).view(-1, *self.image_shape)


def deepinverse_convolutions(
    image_channels: int, channels: Sequence[int] = (64, 32), kernel_size: int = 11
) -> nn.Sequential:
    """DeepInverse's layers after the lift: same-size convolutions with ReLUs, no pooling, a linear last layer.

    DeepInverse's widths are 64 and 32 with 11x11 kernels; smaller ones keep CPU runs short.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise BenchError(f"generator_kernel must be a positive odd number (same-size convolutions), got {kernel_size}")
    if any(int(width) < 1 for width in channels):
        raise BenchError(f"generator_channels must be positive widths, got {list(channels)}")
    layers: list[nn.Module] = []
    width = image_channels
    for out in channels:
        layers += [nn.Conv2d(width, int(out), kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True)]
        width = int(out)
    layers.append(nn.Conv2d(width, image_channels, kernel_size, padding=kernel_size // 2))
    return nn.Sequential(*layers)


def deepinverse_generator(
    matrix: Tensor, image_shape: Sequence[int], channels: Sequence[int] = (64, 32), kernel_size: int = 11
) -> nn.Sequential:
    """The whole DeepInverse network: the fixed A^T lift, then :func:`deepinverse_convolutions`."""
    return nn.Sequential(Lift(matrix, image_shape), *deepinverse_convolutions(image_shape[0], channels, kernel_size))


class PixelNorm(nn.Module):
    """Batch normalisation of every pixel on its own (mean and variance over the batch), in the image's shape.

    Each variant hands its classifier a different signal: A^T y (DCM), G(y) ~ x (DCMG-O), or G(y) ~ x_noise
    (DCMG-N), whose image content is 1/(4 lambda_noise + 1) of x's contrast on top of the fixed pattern
    of eta_c. Normalising by the clean images' statistics, or per channel, would leave DCMG-N's content
    a ninth of the scale the others get; per pixel, every variant's classifier sees a standardised input.
    """

    def __init__(self, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        self.norm = nn.BatchNorm1d(math.prod(self.image_shape))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(1)).view(-1, *self.image_shape)


def lenet_classifier(
    spec: DataSpec, channels: Sequence[int] = (32, 64), hidden: int = 1024, dropout: float = 0.5
) -> nn.Sequential:
    """TF-slim's LeNet: 5x5 convolutions (32, 64) each with 2x2 max-pooling, a hidden layer with dropout, the logits.

    It starts with a :class:`PixelNorm`, as every input it gets is a server-side estimate of the image.
    """
    if len(channels) != 2 or min(channels) < 1 or hidden < 1:
        raise BenchError(
            f"the LeNet classifier takes two positive channel widths and a positive hidden width, "
            f"got classifier_channels={list(channels)}, classifier_hidden={hidden}"
        )
    if not 0.0 <= dropout < 1.0:
        raise BenchError(f"dropout must lie in [0, 1), got {dropout}")
    in_channels, height, width = spec.image_shape
    if min(height, width) < 4:
        raise BenchError(
            f"the LeNet classifier pools twice by 2x2 and needs images of at least 4x4, got {height}x{width}"
        )
    first, second = (int(c) for c in channels)
    return nn.Sequential(
        PixelNorm(spec.image_shape),
        nn.Conv2d(in_channels, first, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(first, second, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(second * (height // 4) * (width // 4), hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, spec.num_classes),
    )
