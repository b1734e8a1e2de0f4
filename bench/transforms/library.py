"""The 50-transformation library of ATS (Gao et al., CVPR 2021, Table 5) on torchvision ``transforms.v2``.

Each entry is (operation, magnitude level 0-9) on AutoAugment's magnitude scale (Cubuk et al.; the
library of DeepVoltaire's AutoAugment that ATS uses). Operations take a float batch (N, C, H, W) in
[0, 1] of any channel count and size, and a per-sample sign in {-1, +1} for the operations whose
direction AutoAugment draws at random (shear, translate, rotate and the enhance family); the rest
ignore it. Geometric operations fill the uncovered area with black: the paper explains horizontal
shifting's low privacy score by "a portion of black area" (section 5.4), which the adaptive attack
of its Table 7 (black initialisation) also assumes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

LEVELS = 10


def _linspace(start: float, stop: float) -> list[float]:
    return torch.linspace(start, stop, LEVELS, dtype=torch.float64).tolist()


#: AutoAugment's magnitude of each operation at levels 0..9
MAGNITUDES: dict[str, list[float]] = {
    "shearX": _linspace(0.0, 0.3),
    "shearY": _linspace(0.0, 0.3),
    "translateX": _linspace(0.0, 150 / 331),  # a fraction of the image's width
    "translateY": _linspace(0.0, 150 / 331),
    "rotate": _linspace(0.0, 30.0),  # degrees
    "color": _linspace(0.0, 0.9),
    "posterize": [float(round(v)) for v in _linspace(8, 4)],  # bits kept
    "solarize": _linspace(256, 0),  # threshold on the 0-255 scale
    "contrast": _linspace(0.0, 0.9),
    "sharpness": _linspace(0.0, 0.9),
    "brightness": _linspace(0.0, 0.9),
    "autocontrast": [0.0] * LEVELS,
    "equalize": [0.0] * LEVELS,
    "invert": [0.0] * LEVELS,
}

#: operations whose direction is drawn per sample (AutoAugment's random.choice([-1, 1]))
SIGNED = frozenset({"shearX", "shearY", "translateX", "translateY", "rotate", "color", "contrast", "sharpness",
                    "brightness"})


def _affine(images: Tensor, *, angle: float = 0.0, translate=(0, 0), shear=(0.0, 0.0)) -> Tensor:
    # center [0, 0]: shear about the top-left corner, as PIL's affine transform in AutoAugment does
    center = [0, 0] if any(shear) else None
    return TF.affine(images, angle=angle, translate=list(translate), scale=1.0, shear=list(shear),
                     interpolation=TF.InterpolationMode.NEAREST, fill=0.0, center=center)


def _apply(name: str, images: Tensor, value: float) -> Tensor:
    """``name`` at the signed magnitude ``value`` on a batch."""
    height, width = images.shape[-2:]
    if name == "shearX":
        return _affine(images, shear=(math.degrees(math.atan(value)), 0.0))
    if name == "shearY":
        return _affine(images, shear=(0.0, math.degrees(math.atan(value))))
    if name == "translateX":
        return _affine(images, translate=(round(value * width), 0))
    if name == "translateY":
        return _affine(images, translate=(0, round(value * height)))
    if name == "rotate":
        return TF.rotate(images, value, interpolation=TF.InterpolationMode.NEAREST, fill=0.0)
    if name == "color":  # saturation; a grey image has none, so it is unchanged
        return TF.adjust_saturation(images, 1.0 + value)
    if name == "contrast":
        return TF.adjust_contrast(images, 1.0 + value)
    if name == "sharpness":
        return TF.adjust_sharpness(images, 1.0 + value) if min(height, width) > 2 else images
    if name == "brightness":
        return TF.adjust_brightness(images, 1.0 + value)
    if name == "posterize":
        return TF.posterize(images, int(value))
    if name == "solarize":
        # a threshold above the brightest pixel (level 0: 256) leaves the image as it is
        return images if value >= 255 else TF.solarize(images, value / 255.0)
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

    @property
    def magnitude(self) -> float:
        return MAGNITUDES[self.operation][self.level]

    def __call__(self, images: Tensor, signs: Tensor) -> Tensor:
        """Apply to a float batch (N, C, H, W) in [0, 1]; ``signs`` (N,) gives each sample's direction."""
        if self.operation not in SIGNED or self.magnitude == 0.0:
            out = _apply(self.operation, images, self.magnitude)
        else:  # one batched call per direction
            out = torch.empty_like(images)
            for sign in (-1, 1):
                chosen = signs == sign
                if chosen.any():
                    out[chosen] = _apply(self.operation, images[chosen], sign * self.magnitude)
        return out.clamp_(0.0, 1.0)


# Table 5: index -> (operation, magnitude level)
_TABLE_5 = [
    ("invert", 7), ("contrast", 6), ("rotate", 2), ("translateX", 9), ("sharpness", 1), ("sharpness", 3),
    ("shearY", 2), ("translateY", 2), ("autocontrast", 5), ("equalize", 2), ("shearY", 5), ("posterize", 5),
    ("color", 3), ("brightness", 5), ("sharpness", 9), ("brightness", 9), ("equalize", 5), ("equalize", 1),
    ("contrast", 7), ("sharpness", 5), ("color", 5), ("translateX", 5), ("equalize", 7), ("autocontrast", 8),
    ("translateY", 3), ("sharpness", 6), ("brightness", 6), ("color", 8), ("solarize", 0), ("invert", 0),
    ("equalize", 0), ("autocontrast", 0), ("equalize", 8), ("equalize", 4), ("color", 5), ("equalize", 5),
    ("autocontrast", 4), ("solarize", 4), ("brightness", 3), ("color", 0), ("solarize", 1), ("autocontrast", 0),
    ("translateY", 3), ("translateY", 4), ("autocontrast", 1), ("solarize", 1), ("equalize", 5), ("invert", 1),
    ("translateY", 3), ("autocontrast", 1),
]

#: the 50 transformations, by index
LIBRARY: tuple[Transformation, ...] = tuple(Transformation(i, op, level) for i, (op, level) in enumerate(_TABLE_5))
