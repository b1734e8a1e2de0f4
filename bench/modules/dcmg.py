"""DCMG: classification from compressed measurements with a generator (Wang et al., AAAI 2024), and its baselines.

The client draws a Gaussian measurement matrix A (m x n, m/n the measurement rate) from a seed, shares
it with the server, and sends y = A x (Eq. 1, no noise). The server lifts y to signal space with a
fixed A^T layer and classifies with a LeNet variant. The variants (Table 1):

* ``DCM`` (Lohit et al. 2016): the A^T projection straight into the classifier, no generator;
* ``DCMG``: a DeepInverse generator (A^T, then convolutions) before the same classifier, trained on
  the classification loss alone (lambda = 0);
* ``DCMGO``: the same network trained with Eq. 2, lambda ||x - x_hat||^2 - log p[label], lambda = 1e5,
  on the original images (which the server then holds);
* ``DCMGN``: the same trained with Eq. 4 on the noisy images x_noise of Algorithm 1; the client sends
  y_noise (Eq. 5) in training and at test time alike.

||x - x_hat||^2 is the per-sample squared Euclidean distance (summed over pixels), averaged over the batch.

DCMG-N's y_noise is an affine map of y (a scale and a constant offset): it hides x from a server that
knows only A (the pseudo-inverse, a decoder trained on A x), but not from one that holds a few (x, y_noise)
pairs, which learns the map back (``AffineInversion``): the harness runs both.
"""

from __future__ import annotations

import inspect
import math
from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.datamodules.base import DataSpec
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.networks.compressive import (
    Lift,
    deepinverse_convolutions,
    gaussian_measurement_matrix,
    measurement_count,
    measurement_network,
)
from bench.networks.registry import Role, build_network
from bench.privacy.nullspace_noise import NullSpaceNoise
from bench.threat_models import Capability, ThreatModel


def reconstruction_error(reconstructed: Tensor, target: Tensor) -> Tensor:
    """||target - x_hat||_2^2 of Eq. 2 / Eq. 4 per sample, averaged over the batch."""
    return (reconstructed - target).square().flatten(1).sum(1).mean()


class CompressiveLearning(PrivacyModule):
    """The shared network of DCM and the DCMG variants; subclasses fix what tells them apart.

    Args:
        measurement_rate: m/n, the share of measurements per pixel (the paper: 0.05, 0.1, 0.25).
        matrix_seed: draws A; client and server share it.
        lam: lambda of Eq. 2 / Eq. 4, the weight of the generator's reconstruction error (DCM: none, 0).
        noise: Algorithm 1's noise on the training images (DCMG-N), or None.
        generator_channels / generator_kernel: widths and kernel size of the generator's convolutions.
        classifier_channels / classifier_hidden / dropout: the widths and dropout of the classifier, TF-slim's LeNet
            (``lenet_tfslim`` in :mod:`bench.networks.registry`).
        lr / weight_decay: Adam's.
    """

    abstract = True
    threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)
    capabilities = (Capability.MEASUREMENT_MATRIX,)
    label_hparams = ("measurement_rate",)
    #: whether the server trains a generator x_hat = G(y) (every variant but DCM)
    has_generator: ClassVar[bool] = True

    def __init__(
        self,
        measurement_rate: float = 0.1,
        matrix_seed: int = 0,
        lam: float = 0.0,
        noise: Optional[dict] = None,
        generator_channels: Sequence[int] = (64, 32),
        generator_kernel: int = 11,
        classifier_channels: Sequence[int] = (32, 64),
        classifier_hidden: int = 1024,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        if lam < 0:
            raise BenchError(
                f"lam (lambda of Eq. 2) must be non-negative, got {lam}; "
                "the paper uses 0 (DCMG) and 1e5 (DCMG-O, DCMG-N)"
            )
        if lam > 0 and not self.has_generator:
            raise BenchError("a reconstruction weight needs a generator; DCM has none")
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        self.lam = float(lam)
        self._keep_own_hparams()
        n = math.prod(self.spec.image_shape)
        m = measurement_count(measurement_rate, n)
        matrix = gaussian_measurement_matrix(m, n, matrix_seed)
        self.noise = NullSpaceNoise(matrix, **noise) if noise is not None else None
        if self.noise is None:
            self.client = measurement_network(matrix)  # Eq. 1: y = A x
        else:  # Eq. 5: y_noise = (A x + A (lambda eta_c + 2 lambda 1)) / (4 lambda + 1), an affine map of x
            scale = self.noise.scale
            self.client = measurement_network(matrix * scale, self.noise.measurement_offset(matrix) * scale)
        self.lift = Lift(matrix, self.spec.image_shape)  # the server's fixed A^T layer
        # the classifier is built before the generator: every variant draws the same classifier from the same seed
        self.classifier = build_network(
            "lenet_tfslim",
            Role.COMPRESSIVE,
            self.spec,
            channels=classifier_channels,
            hidden=classifier_hidden,
            dropout=dropout,
        )
        self.refine = (
            deepinverse_convolutions(self.spec.image_shape[0], generator_channels, generator_kernel)
            if self.has_generator
            else nn.Identity()
        )

    def _keep_own_hparams(self) -> None:
        """Record only the variant's own arguments: DCM has no generator widths, DCMG no lambda to set."""
        own = inspect.signature(type(self).__init__).parameters
        for store in (self._hparams, self._hparams_initial):
            for key in [key for key in store if key not in own]:
                del store[key]

    # ------------------------------------------------------------------ the contract
    def release(self, x: Tensor) -> Tensor:
        """What leaves the client: m measurements per image (y, or y_noise for DCMG-N)."""
        return self.client(x)

    def predict_from_release(self, released: Tensor) -> Tensor:
        return self.classifier(self.server_signal(released))

    def client_network(self) -> nn.Module:
        return self.client

    def server_signal(self, released: Tensor) -> Tensor:
        """What the classifier sees: x_hat = G(y) (the generator), or A^T y for DCM."""
        return self.refine(self.lift(released))

    def measurement_matrix(self) -> Tensor:
        """A (m x n) as the server knows it: the reconstruction attacks that need A look for this method."""
        return self.lift.transpose.weight.T

    # ------------------------------------------------------------------ training
    def training_target(self, images: Tensor) -> Tensor:
        """The images the generator learns to reproduce: the originals (Eq. 2); DCMG-N's x_noise (Eq. 4)."""
        return images

    def objective(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Eq. 2 (Eq. 4 for DCMG-N): lambda ||x - x_hat||^2 - log p[label], with its two parts."""
        x_hat = self.server_signal(self.release(images))
        cross_entropy = F.cross_entropy(self.classifier(x_hat), labels)  # -log p[label], averaged
        parts = {"cross_entropy": cross_entropy, "loss": cross_entropy}
        if self.lam > 0:
            parts["reconstruction"] = reconstruction_error(x_hat, self.training_target(images))
            parts["loss"] = self.lam * parts["reconstruction"] + cross_entropy
        return parts

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        parts = self.objective(images, labels)
        loss = self.check_finite(parts["loss"], "Eq. 2")
        if self.logging_step:
            self.log_dict({f"train/{name}": value.detach() for name, value in parts.items()}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        # A and A^T are fixed: only the generator's convolutions and the classifier learn
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return torch.optim.Adam(trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class _WithGenerator(CompressiveLearning):
    """The DCMG variants: the generator's output is the server's own reconstruction of the client's image."""

    abstract = True
    capabilities = (Capability.MEASUREMENT_MATRIX, Capability.OWN_RECONSTRUCTION)

    def own_reconstruction(self, released: Tensor) -> Tensor:
        """x_hat = G(y): the server's trained generator applied to what the client sent."""
        return self.server_signal(released)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        images, _ = batch
        self.log("val/generator_mse", F.mse_loss(self.own_reconstruction(self.release(images)), images), sync_dist=True)


class DCM(CompressiveLearning):
    """DCM (Lohit et al. 2016): A^T y straight into the LeNet classifier, cross-entropy only.

    Args: see :class:`CompressiveLearning`.
    """

    has_generator = False

    def __init__(
        self,
        measurement_rate: float = 0.1,
        matrix_seed: int = 0,
        classifier_channels: Sequence[int] = (32, 64),
        classifier_hidden: int = 1024,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        super().__init__(
            measurement_rate=measurement_rate,
            matrix_seed=matrix_seed,
            lam=0.0,
            classifier_channels=classifier_channels,
            classifier_hidden=classifier_hidden,
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            data_spec=data_spec,
        )


class DCMG(_WithGenerator):
    """DCMG with lambda = 0: the DeepInverse generator and the classifier trained on cross-entropy alone.

    Args: see :class:`CompressiveLearning`.
    """

    def __init__(
        self,
        measurement_rate: float = 0.1,
        matrix_seed: int = 0,
        generator_channels: Sequence[int] = (64, 32),
        generator_kernel: int = 11,
        classifier_channels: Sequence[int] = (32, 64),
        classifier_hidden: int = 1024,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        super().__init__(
            measurement_rate=measurement_rate,
            matrix_seed=matrix_seed,
            lam=0.0,
            generator_channels=generator_channels,
            generator_kernel=generator_kernel,
            classifier_channels=classifier_channels,
            classifier_hidden=classifier_hidden,
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            data_spec=data_spec,
        )


class DCMGO(_WithGenerator):
    """DCMG-O: Eq. 2 with lambda = 1e5 on the original images, which the server receives for training.

    Args:
        lam: lambda of Eq. 2 (the paper: 100,000). Others: see :class:`CompressiveLearning`.
    """

    display_name = "DCMG-O"
    capabilities = (*_WithGenerator.capabilities, Capability.RELEASED_TRAINING_IMAGES)

    def __init__(
        self,
        measurement_rate: float = 0.1,
        matrix_seed: int = 0,
        lam: float = 1e5,
        generator_channels: Sequence[int] = (64, 32),
        generator_kernel: int = 11,
        classifier_channels: Sequence[int] = (32, 64),
        classifier_hidden: int = 1024,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        super().__init__(
            measurement_rate=measurement_rate,
            matrix_seed=matrix_seed,
            lam=lam,
            generator_channels=generator_channels,
            generator_kernel=generator_kernel,
            classifier_channels=classifier_channels,
            classifier_hidden=classifier_hidden,
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            data_spec=data_spec,
        )

    def released_training_images(self, images: Tensor) -> Tensor:
        """The training images as the server receives them: the originals."""
        return images


class DCMGN(_WithGenerator):
    """DCMG-N: Eq. 4 on Algorithm 1's x_noise; the client sends y_noise (Eq. 5) in training and at test time.

    Args:
        lam: lambda of Eq. 4 (the paper: 100,000).
        lam_noise: lambda_noise of Algorithm 1 (the paper: 2 for MNIST, 1 for SVHN and CIFAR-10).
        p: the share of R's columns summed into each eta_r (the paper: 0.5).
        groups: c, R's column count (default: sqrt(n - m), the paper's).
        noise_seed: the client's secret: draws eta_c and every eta_r (A comes from ``matrix_seed``).
        Others: see :class:`CompressiveLearning`.
    """

    display_name = "DCMG-N"
    capabilities = (*_WithGenerator.capabilities, Capability.RELEASED_TRAINING_IMAGES)

    def __init__(
        self,
        measurement_rate: float = 0.1,
        matrix_seed: int = 0,
        lam: float = 1e5,
        lam_noise: float = 2.0,
        p: float = 0.5,
        groups: Optional[int] = None,
        noise_seed: int = 1,
        generator_channels: Sequence[int] = (64, 32),
        generator_kernel: int = 11,
        classifier_channels: Sequence[int] = (32, 64),
        classifier_hidden: int = 1024,
        dropout: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        super().__init__(
            measurement_rate=measurement_rate,
            matrix_seed=matrix_seed,
            lam=lam,
            noise={"lam_noise": lam_noise, "p": p, "groups": groups, "seed": noise_seed},
            generator_channels=generator_channels,
            generator_kernel=generator_kernel,
            classifier_channels=classifier_channels,
            classifier_hidden=classifier_hidden,
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            data_spec=data_spec,
        )

    def training_target(self, images: Tensor) -> Tensor:
        return self.noise(images)  # Eq. 4: the generator learns x_noise, never x

    def released_training_images(self, images: Tensor) -> Tensor:
        """The training images as the server receives them: x_noise of Algorithm 1."""
        return self.noise(images)
