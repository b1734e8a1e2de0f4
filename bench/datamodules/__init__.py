"""Shared DataModules: every method trains and is attacked on the same five pools."""

from bench.datamodules.base import POOLS, TASKS, DataSpec, ImagePool, PrivacyDataModule, split_indices
from bench.datamodules.celeba import CelebA
from bench.datamodules.cub import CUB200
from bench.datamodules.digits import Digits
from bench.datamodules.folder import LocalFolder, read_idx
from bench.datamodules.torchvision_sets import CIFAR10, CIFAR100, MNIST, SVHN, FashionMNIST

__all__ = [
    "POOLS",
    "TASKS",
    "DataSpec",
    "ImagePool",
    "PrivacyDataModule",
    "split_indices",
    "Digits",
    "LocalFolder",
    "read_idx",
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "CIFAR100",
    "SVHN",
    "CelebA",
    "CUB200",
]
