"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

It ships inside scikit-learn, so the quickstart and the tests run with no download at all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bench.datamodules.base import PrivacyDataModule


class Digits(PrivacyDataModule):
    """UCI optical-recognition digits as shipped by ``sklearn.datasets.load_digits`` (1x8x8)."""

    name = "digits"
    image_shape = (1, 8, 8)
    num_classes = 10

    def __init__(self, batch_size: int = 64, download: bool = False, **kwargs) -> None:
        super().__init__(batch_size=batch_size, download=download, **kwargs)

    def load_sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # pixel values are counts 0..16 of an 4x4 block; rescale to the uint8 range
        images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
        return {"train": (images, torch.from_numpy(digits.target).long())}
