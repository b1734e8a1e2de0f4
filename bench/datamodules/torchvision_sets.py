"""The standard image benchmarks through torchvision: downloaded on first use when ``download`` is on."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets
from torchvision.transforms import v2

from bench.datamodules.base import PrivacyDataModule
from bench.errors import BenchError


class TorchvisionDataModule(PrivacyDataModule):
    """A torchvision dataset with an official train/test split. Subclasses name the dataset."""

    abstract = True
    dataset_class: Callable[..., Any]
    horizontal_flip = True  # digits and house numbers must not be mirrored

    def _dataset(self, train: bool, download: bool):
        return self.dataset_class(self.data_dir, train=train, download=download)

    def download_sources(self) -> None:
        for train in (True, False):
            try:
                self._dataset(train, download=True)
            except Exception as error:  # network errors come in many types; all mean the same here
                raise BenchError(
                    f"{self.name}: download into data_dir='{self.data_dir}' failed ({error}). Put the files there "
                    "yourself, or check the network"
                ) from error

    def load_sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        try:
            splits = {"train": self._dataset(True, False), "test": self._dataset(False, False)}
        except RuntimeError as error:
            raise BenchError(
                f"{self.name}: no dataset files in data_dir='{self.data_dir}' and download is off. Turn download on "
                f"(bench fit: --data.download true) or point data_dir at a folder that holds them "
                f"(bench fit: --data.data_dir, bench evaluate: --data_dir)"
            ) from error
        return {split: self._to_tensors(dataset) for split, dataset in splits.items()}

    def _to_tensors(self, dataset) -> tuple[Tensor, Tensor]:
        images = torch.as_tensor(np.asarray(dataset.data))
        if images.ndim == 3:  # (N, H, W) grey images
            images = images.unsqueeze(1)
        elif images.shape[-1] == 3:  # (N, H, W, C) as CIFAR stores them
            images = images.permute(0, 3, 1, 2)
        labels = torch.as_tensor(np.asarray(dataset.targets))
        return images.contiguous().to(torch.uint8), labels.long()

    def train_transform(self):
        height = self.image_shape[1]
        ops = [v2.RandomCrop(height, padding=height // 8)]
        if self.horizontal_flip:
            ops.append(v2.RandomHorizontalFlip())
        return v2.Compose(ops)


class MNIST(TorchvisionDataModule):
    name = "mnist"
    image_shape = (1, 28, 28)
    num_classes = 10
    mean, std = (0.1307,), (0.3081,)
    dataset_class = datasets.MNIST
    horizontal_flip = False


class FashionMNIST(TorchvisionDataModule):
    name = "fashion_mnist"
    image_shape = (1, 28, 28)
    num_classes = 10
    mean, std = (0.2860,), (0.3530,)
    dataset_class = datasets.FashionMNIST


class CIFAR10(TorchvisionDataModule):
    name = "cifar10"
    image_shape = (3, 32, 32)
    num_classes = 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    dataset_class = datasets.CIFAR10


class CIFAR100(TorchvisionDataModule):
    name = "cifar100"
    image_shape = (3, 32, 32)
    num_classes = 100
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    dataset_class = datasets.CIFAR100


class SVHN(TorchvisionDataModule):
    name = "svhn"
    image_shape = (3, 32, 32)
    num_classes = 10
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    horizontal_flip = False

    def _dataset(self, train: bool, download: bool):
        return datasets.SVHN(self.data_dir, split="train" if train else "test", download=download)

    def _to_tensors(self, dataset) -> tuple[Tensor, Tensor]:
        # SVHN stores (N, C, H, W) images and its labels in `.labels`
        return torch.as_tensor(dataset.data).to(torch.uint8), torch.as_tensor(dataset.labels).long()
