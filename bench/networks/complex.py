"""Complex-valued processing layers and the network families of Xiang et al. (ICLR 2020).

Every layer here is rotation-equivariant: ``layer(exp(i theta) f) == exp(i theta) layer(f)`` for
any per-sample angle theta (Eq. 4-5), so a server can process a feature whose phase it does not
know, and the client undoes the rotation afterwards (Eq. 3). Features are native complex tensors.
Weights stay real (the paper's network is "complex-valued" in its features, not its parameters),
and a real weight applied to the real and imaginary parts alike is complex-linear.

The families (LeNet-5, ResNet-(6n+2) alpha/beta, VGG-16, AlexNet) are written once as plans of
layer steps and built either real-valued (the baselines) or complex-valued (the processing
module), with the same encryption / processing / decryption split as the paper's section 4.1.
Their names (``lenet5``, ``resnet56_alpha``, ...) are given in :mod:`bench.networks.registry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import BenchError
from bench.networks.layers import Normalize
from bench.spec import DataSpec


def _both_parts(fn, f: Tensor) -> Tensor:
    """Apply a real map to the real and imaginary parts in one call (stacked on the batch)."""
    out = fn(torch.cat([f.real, f.imag]))
    real, imag = out.chunk(2)
    return torch.complex(real, imag)


def rotate(f: Tensor, theta: Tensor) -> Tensor:
    """exp(i theta) f, with one angle per sample (theta of shape (N,))."""
    return f * torch.polar(torch.ones_like(theta), theta).view(-1, *([1] * (f.ndim - 1)))


def real_part_at(f: Tensor, theta: Tensor) -> Tensor:
    """Re[f exp(-i theta)] per sample: the feature decrypted with angle theta (Eq. 3)."""
    shape = (-1, *([1] * (f.ndim - 1)))
    return f.real * torch.cos(theta).view(shape) + f.imag * torch.sin(theta).view(shape)


class ComplexConv2d(nn.Module):
    """Convolution without bias (section 3.1): w * (e^{i theta} f) = e^{i theta} (w * f)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: Optional[int] = None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2 if padding is None else padding, bias=False
        )

    def forward(self, f: Tensor) -> Tensor:
        return _both_parts(self.conv, f)


class ComplexLinear(nn.Module):
    """Fully-connected layer without bias: a convolution with a 1x1 map, so equivariant for the same reason."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)

    def forward(self, f: Tensor) -> Tensor:
        return _both_parts(self.linear, f)


class Delta(nn.Module):
    """Eq. 6: delta(f) = |f| / max(|f|, c) * f, the ReLU's replacement; it scales by a function of |f| only.

    Args:
        c: a fixed threshold (the paper's c = 1 in residual networks), or None for the per-channel
            c_k = E_ij |f_ijk| of each sample (networks without normalisation in processing); on
            fully-connected features (N, F) the mean runs over the layer's units.
    """

    def __init__(self, c: Optional[float] = None, eps: float = 1e-12) -> None:
        super().__init__()
        if c is not None and c <= 0:
            raise BenchError(f"the threshold c of Eq. 6 must be positive (or None for the per-channel mean), got {c}")
        self.c = c
        self.eps = eps

    def forward(self, f: Tensor) -> Tensor:
        modulus = f.abs()
        if self.c is None:
            dims = tuple(range(2, f.ndim)) if f.ndim > 2 else (1,)
            c = modulus.mean(dim=dims, keepdim=True)
        else:
            c = torch.full_like(modulus[:1], self.c)
        return f * (modulus / torch.maximum(modulus, c).clamp_min(self.eps))

    def extra_repr(self) -> str:
        return f"c={'E_ij|f|' if self.c is None else self.c}"


class ComplexNorm(nn.Module):
    """Eq. 7: f / sqrt(E_ijl |f|^2) per channel k, over positions and the batch's samples l.

    Like batch-norm, it keeps a running E|f|^2 for evaluation, and a learnable real per-channel scale
    (a real factor keeps the phase); there is no shift, which would break Eq. 5.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_power", torch.ones(channels))

    def forward(self, f: Tensor) -> Tensor:
        dims = (0, *range(2, f.ndim))
        shape = (1, -1, *([1] * (f.ndim - 2)))
        if self.training:
            power = f.real.square().add(f.imag.square()).mean(dim=dims)
            with torch.no_grad():
                self.running_power.lerp_(power.detach(), self.momentum)
        else:
            power = self.running_power
        return f * (self.weight / (power + self.eps).sqrt()).view(shape)


class ComplexMaxPool2d(nn.Module):
    """Max-pooling by modulus: each window passes on its unit of largest |f|, phase untouched.

    Ties (several units of the window within ``tolerance`` of the largest modulus, relatively) go to
    the first of them in the window: a rotation changes moduli by rounding only, so the choice, and
    hence Eq. 5, does not depend on the angle, as a plain argmax of |f| would.
    """

    def __init__(
        self, kernel_size: int, stride: Optional[int] = None, padding: int = 0, tolerance: float = 1e-5
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.tolerance = tolerance

    def forward(self, f: Tensor) -> Tensor:
        n, channels, height, width = f.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        out_h, out_w = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1

        def windows(t: Tensor) -> Tensor:  # (N, C, k*k, L)
            return F.unfold(t, k, padding=p, stride=s).view(n, channels, k * k, -1)

        modulus = windows(f.abs())
        largest = modulus.amax(dim=2, keepdim=True)
        tied = modulus >= largest * (1 - self.tolerance)
        # the first tied unit: tied units weighted k*k, k*k - 1, ..., 1 by position have a unique maximum
        # (a max over weights is several times faster than an argmax over the mask on CPUs)
        order = torch.arange(k * k, 0, -1, device=f.device, dtype=modulus.dtype).view(1, 1, -1, 1)
        first = (tied * order).max(dim=2, keepdim=True).indices
        real = windows(f.real).gather(2, first)
        imag = windows(f.imag).gather(2, first)
        return torch.complex(real, imag).view(n, channels, out_h, out_w)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ComplexAvgPool2d(nn.Module):
    """Average pooling (a linear map with real weights); ``kernel_size=None`` pools globally to 1x1."""

    def __init__(self, kernel_size: Optional[int] = None, stride: Optional[int] = None) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, f: Tensor) -> Tensor:
        if self.kernel_size is None:
            return _both_parts(lambda t: F.adaptive_avg_pool2d(t, 1), f)
        return _both_parts(lambda t: F.avg_pool2d(t, self.kernel_size, self.stride), f)


class ComplexDropout(nn.Module):
    """Dropout of whole complex units: real and imaginary parts are kept or dropped together."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise BenchError(f"dropout probability must lie in [0, 1), got {p}")
        self.p = p

    def forward(self, f: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return f
        keep = torch.empty(f.shape, device=f.device, dtype=f.real.dtype).bernoulli_(1 - self.p)
        return f * (keep / (1 - self.p))


def _shortcut(f: Tensor, out_channels: int, stride: int) -> Tensor:
    """He et al.'s option A: subsample and pad channels with zeros (parameter-free, linear)."""
    if stride > 1:
        f = f[:, :, ::stride, ::stride]
    if out_channels > f.shape[1]:
        f = torch.cat([f, f.new_zeros(f.shape[0], out_channels - f.shape[1], *f.shape[2:])], dim=1)
    return f


class ResidualBlock(nn.Module):
    """The basic block of CIFAR ResNets, act(f + body(f)): real (conv-BN-ReLU) or complex (conv-Eq. 7-Eq. 6)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, complex_valued: bool, c: float = 1.0) -> None:
        super().__init__()
        self.out_channels, self.stride = out_channels, stride
        if complex_valued:
            self.body = nn.Sequential(
                ComplexConv2d(in_channels, out_channels, 3, stride),
                ComplexNorm(out_channels),
                Delta(c),
                ComplexConv2d(out_channels, out_channels, 3),
                ComplexNorm(out_channels),
            )
            self.act: nn.Module = Delta(c)
        else:
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            self.act = nn.ReLU(inplace=True)

    def forward(self, f: Tensor) -> Tensor:
        return self.act(_shortcut(f, self.out_channels, self.stride) + self.body(f))  # skip connection f + Phi(f)


# ---------------------------------------------------------------------------- plans
# A step is a tuple: ("conv", channels, kernel, stride), ("act",), ("norm",), ("max", kernel, stride),
# ("gap",) global average pool + flatten, ("flat",), ("fc", width) (None: the class count),
# ("drop", p), ("res", channels, stride).
Step = tuple


def _build(
    steps: Sequence[Step],
    in_shape: Sequence[int],
    complex_valued: bool,
    c: Optional[float],
    num_classes: int,
    bias: bool = True,
) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Build ``steps`` on inputs of ``in_shape`` (C, H, W); returns the network and its output shape.

    ``bias=False`` drops the biases of the real-valued convolutions and fully-connected layers."""
    layers: list[nn.Module] = []
    shape = tuple(in_shape)
    for index, step in enumerate(steps):
        kind = step[0]
        followed_by_norm = index + 1 < len(steps) and steps[index + 1][0] == "norm"
        if kind == "conv":
            _, out, kernel, stride = step
            layer = (
                ComplexConv2d(shape[0], out, kernel, stride)
                if complex_valued
                else nn.Conv2d(shape[0], out, kernel, stride, kernel // 2, bias=bias and not followed_by_norm)
            )
        elif kind == "act":
            layer = Delta(c) if complex_valued else nn.ReLU(inplace=True)
        elif kind == "norm":
            layer = (
                ComplexNorm(shape[0])
                if complex_valued
                else (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0])
            )
        elif kind == "max":
            _, kernel, stride = step
            if min(shape[1:]) < kernel:
                raise BenchError(
                    f"a {shape[1]}x{shape[2]} feature map is too small for this network's {kernel}x{kernel} pooling; "
                    f"pick a network for smaller inputs (e.g. --model.network lenet5)"
                )
            layer = ComplexMaxPool2d(kernel, stride) if complex_valued else nn.MaxPool2d(kernel, stride)
        elif kind == "gap":
            layer = (
                nn.Sequential(ComplexAvgPool2d(), nn.Flatten())
                if complex_valued
                else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            )
        elif kind == "flat":
            layer = nn.Flatten()
        elif kind == "fc":
            width = num_classes if step[1] is None else step[1]
            features = int(math.prod(shape))
            layer = ComplexLinear(features, width) if complex_valued else nn.Linear(features, width, bias=bias)
        elif kind == "drop":
            layer = ComplexDropout(step[1]) if complex_valued else nn.Dropout(step[1])
        elif kind == "res":
            _, out, stride = step
            layer = ResidualBlock(shape[0], out, stride, complex_valued, 1.0 if c is None else c)
        else:
            raise ValueError(f"unknown plan step {step}")
        layers.append(layer)
        shape = _output_shape(layer, shape, complex_valued)
    return nn.Sequential(*layers), shape


@torch.no_grad()
def _output_shape(layer: nn.Module, shape: tuple[int, ...], complex_valued: bool) -> tuple[int, ...]:
    probe = torch.zeros(2, *shape, dtype=torch.complex64 if complex_valued else torch.float32)
    was_training = layer.training
    out = layer.eval()(probe)
    layer.train(was_training)
    return tuple(out.shape[1:])


@dataclass
class ComplexFamily:
    """The three modules' plans of one network, and the threshold c of Eq. 6 in its processing module."""

    encoder: list[Step]
    processing: list[Step]
    decryption: list[Step]
    c: Optional[float]


def lenet5_plans(spec: DataSpec) -> ComplexFamily:
    # encryption: the first convolution (section 4.1); decryption: the softmax (in the loss)
    return ComplexFamily(
        encoder=[("conv", 6, 5, 1), ("act",)],
        processing=[
            ("max", 2, 2),
            ("conv", 16, 5, 1),
            ("act",),
            ("max", 2, 2),
            ("flat",),
            ("fc", 120),
            ("act",),
            ("fc", 84),
            ("act",),
            ("fc", None),
        ],
        decryption=[],
        c=None,
    )


def resnet_plans(spec: DataSpec, depth: int, variant: str) -> ComplexFamily:
    """ResNet-``depth`` (6n + 2) of He et al. for small images, split at ``alpha`` or ``beta`` (section 4.1)."""
    if (depth - 2) % 6 or depth < 14:
        raise BenchError(f"ResNet depth must be 6n + 2 with n >= 2 (20, 32, 44, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    stage = lambda width, stride: [("res", width, stride)] + [("res", width, 1)] * (n - 1)  # noqa: E731
    encoder = [("conv", 16, 3, 1), ("norm",), ("act",)] + stage(16, 1)  # up to the layer before the first 16x16 map
    head = [("gap",), ("fc", None)]
    if variant == "alpha":  # decryption: from the first 8x8 feature map on
        return ComplexFamily(encoder, stage(32, 2), stage(64, 2) + head, c=1.0)
    # beta: the last residual block and what follows it are the decryption module
    return ComplexFamily(encoder, stage(32, 2) + stage(64, 2)[:-1], [("res", 64, 1)] + head, c=1.0)


def vgg16_plans(spec: DataSpec) -> ComplexFamily:
    blocks = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
    steps: list[Step] = []
    for widths in blocks:
        for width in widths:
            steps += [("conv", width, 3, 1), ("act",)]
        steps.append(("max", 2, 2))
    hidden = 4096 if min(spec.image_shape[1:]) >= 64 else 512  # VGG's head, scaled down for CIFAR-sized inputs
    # encryption: every layer before the last feature map of the third block (56x56 at 224x224)
    split = 2 * 2 + 1 + 2 * 2 + 1 + 2 * 2
    return ComplexFamily(
        encoder=steps[:split],
        processing=steps[split:] + [("flat",)],
        decryption=[("fc", hidden), ("act",), ("drop", 0.5), ("fc", hidden), ("act",), ("drop", 0.5), ("fc", None)],
        c=None,
    )


def alexnet_plans(spec: DataSpec) -> ComplexFamily:
    if min(spec.image_shape[1:]) >= 64:  # ImageNet-sized (CelebA crops): Krizhevsky et al.'s layers
        first, pool, hidden = ("conv", 64, 11, 4), ("max", 3, 2), 4096
    else:  # CIFAR-sized: the common small-image AlexNet
        first, pool, hidden = ("conv", 64, 5, 1), ("max", 2, 2), 1024
    # encryption: the first three convolutions (section 4.1); decryption: the fully-connected layers
    return ComplexFamily(
        encoder=[first, ("act",), pool, ("conv", 192, 5, 1), ("act",), pool, ("conv", 384, 3, 1), ("act",)],
        processing=[("conv", 256, 3, 1), ("act",), ("conv", 256, 3, 1), ("act",), pool, ("flat",)],
        decryption=[("drop", 0.5), ("fc", hidden), ("act",), ("drop", 0.5), ("fc", hidden), ("act",), ("fc", None)],
        c=None,
    )


@dataclass
class SplitModules:
    """encoder: images in [0, 1] -> real feature; processing: the server part; decryption: the client's last layers."""

    encoder: nn.Sequential
    processing: nn.Sequential
    decryption: nn.Sequential
    feature_shape: tuple[int, ...]


def encoder_shape(plans: ComplexFamily, spec: DataSpec) -> tuple[int, ...]:
    """The shape (C, H, W) of the encoder's feature before the generator (K defaults to its C)."""
    return _build(plans.encoder, spec.image_shape, False, None, spec.num_classes)[1]


def build_modules(
    plans: ComplexFamily,
    spec: DataSpec,
    complex_valued: bool,
    generator_channels: Optional[int] = None,
    encoder_bias: bool = True,
) -> SplitModules:
    """The network of ``plans`` adapted to ``spec``, split into its three modules.

    ``complex_valued`` builds the processing module from the equivariant layers above (the encoder
    and the decryption module stay real). ``generator_channels`` (K) appends the adversarial-learning
    module's generator, a 3x3 convolution with K filters, to the encoder (section 4.1).
    ``encoder_bias=False`` makes the encoder (and generator) free of additive terms: no biases, and
    the input normalisation only scales (x / std; subtracting the mean is a bias too,
    w * (x - m) = w * x - m sum(w)), so a blank (zero) image region maps to a zero feature.
    """
    if not encoder_bias and any(step[0] in ("norm", "res") for step in plans.encoder):
        raise BenchError(
            "a bias-free encoder is defined for plain convolutional encoders (lenet5, vgg16, alexnet); "
            "this network's encoder has batch-norm, whose shift is a learned bias"
        )
    encoder, shape = _build(plans.encoder, spec.image_shape, False, None, spec.num_classes, bias=encoder_bias)
    mean = spec.mean if encoder_bias else [0.0] * len(spec.mean)
    encoder = nn.Sequential(Normalize(mean, spec.std), *encoder)
    if generator_channels is not None:
        if generator_channels < 1:
            raise BenchError(f"generator_channels (K) must be at least 1, got {generator_channels}")
        encoder.append(nn.Conv2d(shape[0], generator_channels, 3, padding=1, bias=encoder_bias))
        shape = (generator_channels, *shape[1:])
    processing, out_shape = _build(plans.processing, shape, complex_valued, plans.c, spec.num_classes)
    decryption, _ = _build(plans.decryption, out_shape, False, plans.c, spec.num_classes)
    return SplitModules(encoder, processing, decryption, shape)
