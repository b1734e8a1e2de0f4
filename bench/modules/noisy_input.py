"""Noisy: the client releases its raw input with Laplace noise added (RAN paper, section 3.1).

A local-differential-privacy style baseline: the noisy image leaves the client, and the server runs
a standard classifier (the whole network, encoder and MLP) trained and tested on noisy data.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from bench.deprecation import keep_current_names
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.networks.registry import Role, build_network, resolve_network
from bench.spec import TASKS, DataSpec
from bench.threat_models import ThreatModel


class LaplaceNoise(nn.Module):
    """Adds Laplace(0, scale) noise to every element, in training and at test time alike."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        if self.scale == 0:
            return x
        # torch's sampler keeps its uniform draw off the interval's end: a hand-written inverse CDF
        # returns -inf whenever rand() gives exactly 0, about once per 2^24 draws
        laplace = torch.distributions.Laplace(torch.zeros((), device=x.device, dtype=x.dtype), self.scale)
        return x + laplace.sample(x.shape)


class NoisyInput(PrivacyModule):
    """Laplace noise on the raw input (scale: noise_factor, images in [0, 1]); a classifier on the noisy data.

    Args:
        network: the server's split network (``lenet5``, ``vgg9`` or ``vgg16``; :mod:`bench.networks.registry`),
            encoder and MLP applied to the noisy image.
        noise_factor: scale b of the Laplace noise; the paper sweeps 0.1 ... 0.9.
    """

    threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)
    display_name = "Noisy"
    tasks = TASKS  # the default training step's loss follows the data spec (classes or attributes)
    label_hparams = ("noise_factor",)

    def __init__(
        self,
        network: str = "lenet5",
        noise_factor: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        if noise_factor < 0:
            raise BenchError(f"noise_factor must be non-negative, got {noise_factor}")
        network = resolve_network(network, Role.SPLIT, "NoisyInput")
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        keep_current_names(self.hparams, NoisyInput, network=network)
        self.noise = LaplaceNoise(noise_factor)
        encoder, classifier = build_network(network, Role.SPLIT, self.spec)
        self.server = nn.Sequential(encoder, classifier)

    def release(self, x: Tensor) -> Tensor:
        return self.noise(x)

    def predict_from_release(self, released: Tensor) -> Tensor:
        return self.server(released)

    def client_network(self) -> nn.Module:
        return self.noise
