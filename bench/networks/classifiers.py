"""Whole-image classifiers of the membership-inference experiments (MCMIA section V-A).

LeNet-5 for MNIST-sized inputs; VGG-16, ResNet-18 and MobileNetV2 from torchvision adapted to
small inputs (a 3x3 stride-1 stem and no early down-sampling, as is usual for CIFAR); and the
four-layer CNN (two convolutions, two fully connected layers) of the DP comparison (Rahman et
al. 2018, the paper's [16]). Every network starts with :class:`Normalize` and adapts to the
dataset's channels, image size and class count. LeNet-5 and the CNN have no batch-norm, so that
per-sample gradients (DP-SGD) are defined for them. Their names are given in :mod:`bench.networks.registry`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from bench.errors import BenchError
from bench.networks.layers import Normalize
from bench.spec import DataSpec


def _flat_width(features: nn.Module, spec: DataSpec) -> int:
    with torch.no_grad():
        width = int(features.eval()(torch.zeros(2, *spec.image_shape)).flatten(1).shape[1])
    features.train()
    return width


def lenet5(spec: DataSpec) -> nn.Sequential:
    """LeNet-5: two 5x5 convolutions with 2x2 average pooling, then 120 -> 84 -> classes, ReLU."""
    channels, height, width = spec.image_shape
    padding = 2  # a "same" first convolution: 28x28 MNIST behaves as LeNet's padded 32x32 input
    if min(height, width) < 8:
        raise BenchError(f"LeNet-5 needs images of at least 8x8, got {height}x{width}")
    pool_twice = min(height, width) >= 16
    features = nn.Sequential(
        Normalize(spec.mean, spec.std),
        nn.Conv2d(channels, 6, 5, padding=padding),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=0 if pool_twice else 2),
        nn.ReLU(),
        nn.AvgPool2d(2) if pool_twice else nn.Identity(),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        nn.Linear(_flat_width(features, spec), 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, spec.num_classes),
    )


def cnn4(spec: DataSpec) -> nn.Sequential:
    """The 4-layer CNN of the DP comparison: conv(32)-pool, conv(64)-pool, FC 128, FC classes."""
    channels = spec.image_shape[0]
    features = nn.Sequential(
        Normalize(spec.mean, spec.std),
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features, nn.Linear(_flat_width(features, spec), 128), nn.ReLU(), nn.Linear(128, spec.num_classes)
    )


def vgg16(spec: DataSpec) -> nn.Sequential:
    """VGG-16 (batch-norm) with its 13 3x3 convolutions; for small inputs a 512 -> 512 -> classes head."""
    net = models.vgg16_bn(weights=None, num_classes=spec.num_classes)
    if spec.image_shape[0] != 3:
        net.features[0] = nn.Conv2d(spec.image_shape[0], 64, 3, padding=1)
    if min(spec.image_shape[1:]) < 32:
        raise BenchError(f"VGG-16 pools five times: it needs images of at least 32x32, got {spec.image_shape[1:]}")
    features = nn.Sequential(Normalize(spec.mean, spec.std), net.features, nn.Flatten())
    width = _flat_width(features, spec)
    head = nn.Sequential(
        nn.Linear(width, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, spec.num_classes),
    )
    return nn.Sequential(*features, *head)


def resnet18(spec: DataSpec) -> nn.Sequential:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (CIFAR-sized inputs keep their resolution)."""
    net = models.resnet18(weights=None, num_classes=spec.num_classes)
    net.conv1 = nn.Conv2d(spec.image_shape[0], 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return nn.Sequential(Normalize(spec.mean, spec.std), net)


def mobilenet_v2(spec: DataSpec) -> nn.Sequential:
    """MobileNetV2 (32-filter stem, 17 inverted-residual bottlenecks) with a stride-1 stem for small inputs."""
    net = models.mobilenet_v2(weights=None, num_classes=spec.num_classes)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(spec.image_shape[0], stem.out_channels, 3, stride=1, padding=1, bias=False)
    return nn.Sequential(Normalize(spec.mean, spec.std), net)


def has_batch_norm(network: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


class InferenceModel(nn.Module):
    """Nasr et al.'s membership-inference model h(f(x), y) -> P(member) (MCMIA section V-B).

    The prediction vector goes through [classes -> 1024 -> 512 -> 64], the one-hot label through
    [classes -> 512 -> 64], their concatenation through [128 -> 256 -> 64 -> 1]; ReLU; weights
    drawn from N(0, 0.01), biases zero. The paper's first widths (100) are CIFAR-100's class count.
    Returns the logit of P(member).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.prediction = nn.Sequential(
            nn.Linear(num_classes, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 64), nn.ReLU()
        )
        self.label = nn.Sequential(nn.Linear(num_classes, 512), nn.ReLU(), nn.Linear(512, 64), nn.ReLU())
        self.combined = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1))
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, 0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(labels, self.num_classes).to(probabilities.dtype)
        return self.combined(torch.cat([self.prediction(probabilities), self.label(one_hot)], dim=1)).squeeze(1)
