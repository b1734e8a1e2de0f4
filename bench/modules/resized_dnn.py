"""DNN(resized): DNN features reduced by PCA and perturbed with Laplace noise before release.

The baseline of Ossia et al. (2017) as RAN's section 3.1 compares with it. Training has two phases
within one run: first the plain split network (encoder E and classifier C) learns the task; then PCA
is fitted on E's features of the whole training pool, E is frozen, and a new server classifier learns
on the released features  z = PCA_k(E(x)) + Laplace(0, noise_factor * sigma_j),  where sigma_j is the
standard deviation of principal component j, so that the noise factor means the same for every
component and every dataset.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from bench.deprecation import keep_current_names
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.modules.noisy_input import LaplaceNoise
from bench.networks.registry import Role, build_network, resolve_network
from bench.networks.split import mlp_classifier
from bench.spec import TASKS, DataSpec
from bench.threat_models import ThreatModel


class ResizedDNN(PrivacyModule):
    """PCA-reduced, Laplace-perturbed DNN features (Ossia et al.) with a classifier trained on them.

    Args:
        network: the split network whose encoder is reduced (``lenet5``, ``vgg9`` or ``vgg16``;
            :mod:`bench.networks.registry`).
        components: principal components kept (the released dimension).
        noise_factor: Laplace scale relative to each component's standard deviation; the paper sweeps 0.1 ... 0.9.
        pretrain_fraction: share of the training batches spent on the plain DNN before PCA is fitted.
        lr: Adam learning rate of both phases.
    """

    threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)
    tasks = TASKS  # both phases' losses are the data spec's (cross-entropy, or BCE per attribute)
    display_name = "DNN(resized)"
    label_hparams = ("noise_factor",)

    def __init__(
        self,
        network: str = "lenet5",
        components: int = 32,
        noise_factor: float = 0.5,
        pretrain_fraction: float = 0.5,
        lr: float = 1e-3,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        if components < 1:
            raise BenchError(f"components must be at least 1, got {components}")
        if noise_factor < 0:
            raise BenchError(f"noise_factor must be non-negative, got {noise_factor}")
        if not 0.0 < pretrain_fraction < 1.0:
            raise BenchError(f"pretrain_fraction must lie in (0, 1), got {pretrain_fraction}")
        network = resolve_network(network, Role.SPLIT, "ResizedDNN")
        super().__init__(data_spec=data_spec, lr=lr)
        keep_current_names(self.hparams, ResizedDNN, network=network)
        self.automatic_optimization = False  # two phases, two optimizers
        self.encoder, self.classifier = build_network(network, Role.SPLIT, self.spec)
        with torch.no_grad():
            feature_dim = self.encoder.eval()(torch.zeros(1, *self.spec.image_shape)).numel()
        self.encoder.train()
        if components > feature_dim:
            raise BenchError(f"components ({components}) cannot exceed the feature dimension ({feature_dim})")
        # the PCA projection as a linear layer: weight = principal axes, bias = -axes @ mean
        self.projection = nn.Linear(feature_dim, components)
        self.projection.requires_grad_(False)
        self.register_buffer("component_std", torch.ones(components))
        self.register_buffer("pca_fitted", torch.tensor(False))
        self.noise = LaplaceNoise(noise_factor)
        self.reduced_classifier = mlp_classifier((components,), [128], self.spec.num_classes)

    # ------------------------------------------------------------------ the contract
    def client_network(self) -> nn.Module:
        return nn.Sequential(self.encoder, nn.Flatten(), self.projection)

    def release(self, x: Tensor) -> Tensor:
        reduced = self.projection(self.encoder(x).flatten(1))
        return reduced + self.noise(torch.zeros_like(reduced)) * self.component_std

    def predict_from_release(self, released: Tensor) -> Tensor:
        return self.reduced_classifier(released)

    # ------------------------------------------------------------------ two phases
    def configure_optimizers(self):
        return [
            torch.optim.Adam([*self.encoder.parameters(), *self.classifier.parameters()], lr=self.hparams.lr),
            torch.optim.Adam(self.reduced_classifier.parameters(), lr=self.hparams.lr),
        ]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        dnn_optimizer, reduced_optimizer = self.optimizers()
        if self._batches_seen() < self._pretrain_batches():
            loss = self.task_loss(self.classifier(self.encoder(images)), labels)  # phase 1: the plain DNN
            optimizer = dnn_optimizer
        else:
            if not self.pca_fitted:
                self.fit_pca()
            self.encoder.eval()  # frozen for good: batch-norm statistics must not drift from what PCA saw
            with torch.no_grad():
                released = self.release(images)
            loss = self.task_loss(self.reduced_classifier(released), labels)  # phase 2: classify released features
            optimizer = reduced_optimizer
        self.manual_step(optimizer, loss, self.task_loss_name, log="train/loss")

    def _batches_seen(self) -> int:
        return self.trainer.fit_loop.total_batch_idx

    def _pretrain_batches(self) -> int:
        total = self.trainer.estimated_stepping_batches
        return max(1, math.floor(self.hparams.pretrain_fraction * total)) if math.isfinite(total) else 1

    @torch.no_grad()
    def fit_pca(self) -> None:
        """Fit PCA on the encoder's features of the whole training pool (identical on every DDP rank)."""
        datamodule = self.trainer.datamodule
        was_training = self.encoder.training
        self.encoder.eval()
        features = torch.cat(
            [
                self.encoder(images.to(self.device)).flatten(1)
                for images, _ in datamodule.pool_dataloader("train", batch_size=datamodule.eval_batch_size)
            ]
        )
        self.encoder.train(was_training)
        components = self.hparams.components
        if features.shape[0] < components:
            raise BenchError(
                f"PCA needs at least {components} training samples, the train pool has {features.shape[0]}"
            )
        mean = features.mean(0)
        _, singular_values, axes = torch.linalg.svd(features - mean, full_matrices=False)
        axes = axes[:components]
        axes = axes * torch.where(axes.sum(1, keepdim=True) < 0, -1.0, 1.0)  # fix SVD's sign ambiguity
        # every rank computed the same numbers; rank 0's copy makes that exact
        axes, mean, singular_values = self.trainer.strategy.broadcast((axes, mean, singular_values), src=0)
        self.projection.weight.copy_(axes)
        self.projection.bias.copy_(-axes @ mean)
        self.component_std.copy_(singular_values[:components] / math.sqrt(max(1, features.shape[0] - 1)))
        self.pca_fitted.fill_(True)
        self.encoder.requires_grad_(False)  # the released features must stay those PCA was fitted on
