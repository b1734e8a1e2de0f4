"""The 50-transformation library of ATS (Gao et al., CVPR 2021, Table 5) on batched tensors.

Each entry is (operation, magnitude level 0-9). Two variants of the operations' definitions:

* ``reference`` (the default): the authors' code (gaow0007/ATSPrivacy, ``autoaugment.py``), which departs
  from AutoAugment in three ways that matter: the enhance family (color, contrast, sharpness, brightness)
  reaches a factor of 1 +- 0.5 (not 0.9), rotation always turns counter-clockwise (PIL's ``rotate(m)``, no
  random sign) and fills the uncovered corners with grey 128, and shears resample bicubically. The
  reference also puts every image through RandomCrop(padding 4) and a horizontal flip before a non-empty
  policy; that part lives in :class:`bench.transforms.policy.Policy` (``crop_flip``).
* ``autoaugment``: DeepVoltaire's AutoAugment library as published (enhance up to 0.9, rotation of random
  sign with black fill, nearest-neighbour shears): bench's earlier definitions, kept for comparison.

Geometry follows PIL's affine transform, which the reference calls: an output pixel (x, y) reads the input
at (x + 0.5 + dx, y + 0.5 + dy) in PIL's pixel-centre coordinates, so a translation by t pixels moves the
content by floor(|t| + 0.5) whole pixels (nearest neighbour), left or up for a positive sign, and a shear
shifts row y by m (y + 0.5). Uncovered areas are black (fill 0) except the reference's rotation. Colour
operations act on the 0-255 scale where PIL's quantisation decides the result (posterize, solarize) and in
floating point elsewhere (PIL rounds every result to 8 bits: our values differ from it by at most ~1/255).

Operations take a float batch (N, C, H, W) in [0, 1] of any channel count and size, and a per-sample sign in
{-1, +1} for the operations whose direction is drawn at random (``random.choice([-1, 1])``).
``docs/ats_transformations.md`` has the per-operation table.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from bench.errors import BenchError

LEVELS = 10
VARIANTS = ("reference", "autoaugment")
#: the reference's rotation fill: PIL composites the rotated image over grey (128,) * 4
ROTATE_FILL_REFERENCE = 128 / 255


def _linspace(start: float, stop: float) -> list[float]:
    return torch.linspace(start, stop, LEVELS, dtype=torch.float64).tolist()


def _magnitudes(enhance_max: float) -> dict[str, list[float]]:
    return {
        "shearX": _linspace(0.0, 0.3),
        "shearY": _linspace(0.0, 0.3),
        "translateX": _linspace(0.0, 150 / 331),  # a fraction of the image's width
        "translateY": _linspace(0.0, 150 / 331),
        "rotate": _linspace(0.0, 30.0),  # degrees
        "color": _linspace(0.0, enhance_max),
        "posterize": [float(round(v)) for v in _linspace(8, 4)],  # bits kept (np.round: 5.78 -> 6, ...)
        "solarize": _linspace(256, 0),  # threshold on the 0-255 scale
        "contrast": _linspace(0.0, enhance_max),
        "sharpness": _linspace(0.0, enhance_max),
        "brightness": _linspace(0.0, enhance_max),
        "autocontrast": [0.0] * LEVELS,
        "equalize": [0.0] * LEVELS,
        "invert": [0.0] * LEVELS,
    }


#: each variant's magnitude of each operation at levels 0..9
MAGNITUDES_BY_VARIANT: dict[str, dict[str, list[float]]] = {
    "reference": _magnitudes(0.5),
    "autoaugment": _magnitudes(0.9),
}
#: the default (reference) magnitudes
MAGNITUDES = MAGNITUDES_BY_VARIANT["reference"]

_ENHANCE = frozenset({"color", "contrast", "sharpness", "brightness"})
_GEOMETRIC_SIGNED = frozenset({"shearX", "shearY", "translateX", "translateY"})
#: operations whose direction is drawn per sample, by variant (the reference never flips the rotation)
SIGNED_BY_VARIANT = {
    "reference": _GEOMETRIC_SIGNED | _ENHANCE,
    "autoaugment": _GEOMETRIC_SIGNED | _ENHANCE | {"rotate"},
}
SIGNED = SIGNED_BY_VARIANT["reference"]


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise BenchError(f"unknown transformation variant '{variant}'; choose one of {list(VARIANTS)}")


def pil_shift(offset: float) -> int:
    """Whole pixels a nearest-neighbour PIL translation by ``offset`` pixels moves the content (floor(|t| + 0.5))."""
    return int(math.floor(abs(offset) + 0.5))


def _translate(images: Tensor, shift_x: int, shift_y: int) -> Tensor:
    """out(x, y) = in(x + shift_x, y + shift_y), black outside (PIL's affine with offsets, nearest)."""
    height, width = images.shape[-2:]
    out = torch.zeros_like(images)
    if abs(shift_x) >= width or abs(shift_y) >= height:
        return out
    src_y, dst_y = (
        (slice(shift_y, height), slice(0, height - shift_y))
        if shift_y >= 0
        else (slice(0, height + shift_y), slice(-shift_y, height))
    )
    src_x, dst_x = (
        (slice(shift_x, width), slice(0, width - shift_x))
        if shift_x >= 0
        else (slice(0, width + shift_x), slice(-shift_x, width))
    )
    out[..., dst_y, dst_x] = images[..., src_y, src_x]
    return out


def _shear(images: Tensor, m: float, axis: str, mode: str) -> Tensor:
    """PIL's ``transform(AFFINE, (1, m, 0, 0, 1, 0))`` (shearX) or ``(1, 0, 0, m, 1, 0)`` (shearY), black outside:
    out(x, y) = in(x + m (y + 0.5), y) in pixel indices (shearX)."""
    height, width = images.shape[-2:]
    ys = torch.arange(height, dtype=images.dtype, device=images.device).view(-1, 1).expand(height, width)
    xs = torch.arange(width, dtype=images.dtype, device=images.device).view(1, -1).expand(height, width)
    if axis == "x":
        xs = xs + m * (ys + 0.5)
    else:
        ys = ys + m * (xs + 0.5)
    # grid_sample's align_corners=False: index i sits at (2 i + 1) / size - 1
    grid = torch.stack([(2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1], dim=-1)
    grid = grid.unsqueeze(0).expand(images.shape[0], height, width, 2)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _posterize(images: Tensor, bits: int) -> Tensor:
    """PIL's ``ImageOps.posterize``: keep the top ``bits`` bits of each 8-bit value."""
    levels = torch.round(images * 255).to(torch.uint8)
    mask = (0xFF << (8 - bits)) & 0xFF
    return (levels & mask).to(images.dtype) / 255


def _solarize(images: Tensor, threshold: float) -> Tensor:
    """PIL's ``ImageOps.solarize``: invert every 8-bit value at or above ``threshold``."""
    return torch.where(torch.round(images * 255) >= threshold, 1 - images, images)


def _apply(name: str, images: Tensor, value: float, variant: str) -> Tensor:
    """``name`` at the signed magnitude ``value`` on a batch."""
    height, width = images.shape[-2:]
    reference = variant == "reference"
    if name in ("shearX", "shearY"):
        # the reference: PIL bicubic (grid_sample's bicubic kernel is a = -0.75, PIL's a = -0.5); AutoAugment
        # as bench had it: nearest
        return _shear(images, value, name[-1].lower(), "bicubic" if reference else "nearest")
    if name == "translateX":
        return _translate(images, int(math.copysign(pil_shift(value * width), value)), 0)
    if name == "translateY":
        return _translate(images, 0, int(math.copysign(pil_shift(value * height), value)))
    if name == "rotate":  # PIL's rotate: counter-clockwise about the centre, nearest
        fill = ROTATE_FILL_REFERENCE if reference else 0.0
        return TF.rotate(images, value, interpolation=TF.InterpolationMode.NEAREST, fill=fill)
    if name == "color":  # saturation; a grey image has none, so it is unchanged
        return TF.adjust_saturation(images, 1.0 + value)
    if name == "contrast":
        return TF.adjust_contrast(images, 1.0 + value)
    if name == "sharpness":
        return TF.adjust_sharpness(images, 1.0 + value) if min(height, width) > 2 else images
    if name == "brightness":
        return TF.adjust_brightness(images, 1.0 + value)
    if name == "posterize":
        return _posterize(images, int(value))
    if name == "solarize":
        return _solarize(images, value)
    if name == "autocontrast":
        return TF.autocontrast(images)
    if name == "equalize":
        return TF.equalize(images)
    if name == "invert":
        return TF.invert(images)
    raise KeyError(name)


class Transformation(NamedTuple):
    """One entry of the library: an operation at a magnitude level."""

    index: int
    operation: str
    level: int

    def magnitude_of(self, variant: str = "reference") -> float:
        return MAGNITUDES_BY_VARIANT[variant][self.operation][self.level]

    @property
    def magnitude(self) -> float:
        return self.magnitude_of("reference")

    def __call__(self, images: Tensor, signs: Tensor, variant: str = "reference") -> Tensor:
        """Apply to a float batch (N, C, H, W) in [0, 1]; ``signs`` (N,) gives each sample's direction."""
        _check_variant(variant)
        magnitude = self.magnitude_of(variant)
        if self.operation not in SIGNED_BY_VARIANT[variant] or magnitude == 0.0:
            out = _apply(self.operation, images, magnitude, variant)
        else:  # one batched call per direction
            out = torch.empty_like(images)
            for sign in (-1, 1):
                chosen = signs == sign
                if chosen.any():
                    out[chosen] = _apply(self.operation, images[chosen], sign * magnitude, variant)
        return out.clamp_(0.0, 1.0)


# Table 5 (= the reference's policy.py, in order): index -> (operation, magnitude level)
_TABLE_5 = [
    ("invert", 7),
    ("contrast", 6),
    ("rotate", 2),
    ("translateX", 9),
    ("sharpness", 1),
    ("sharpness", 3),
    ("shearY", 2),
    ("translateY", 2),
    ("autocontrast", 5),
    ("equalize", 2),
    ("shearY", 5),
    ("posterize", 5),
    ("color", 3),
    ("brightness", 5),
    ("sharpness", 9),
    ("brightness", 9),
    ("equalize", 5),
    ("equalize", 1),
    ("contrast", 7),
    ("sharpness", 5),
    ("color", 5),
    ("translateX", 5),
    ("equalize", 7),
    ("autocontrast", 8),
    ("translateY", 3),
    ("sharpness", 6),
    ("brightness", 6),
    ("color", 8),
    ("solarize", 0),
    ("invert", 0),
    ("equalize", 0),
    ("autocontrast", 0),
    ("equalize", 8),
    ("equalize", 4),
    ("color", 5),
    ("equalize", 5),
    ("autocontrast", 4),
    ("solarize", 4),
    ("brightness", 3),
    ("color", 0),
    ("solarize", 1),
    ("autocontrast", 0),
    ("translateY", 3),
    ("translateY", 4),
    ("autocontrast", 1),
    ("solarize", 1),
    ("equalize", 5),
    ("invert", 1),
    ("translateY", 3),
    ("autocontrast", 1),
]

#: the 50 transformations, by index
LIBRARY: tuple[Transformation, ...] = tuple(Transformation(i, op, level) for i, (op, level) in enumerate(_TABLE_5))
