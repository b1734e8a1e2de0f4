"""Phase estimation then inversion: the attacks on features hidden in a random phase (Xiang et al., strategy 1).

Threat model: feature release, against a method that releases x = exp(i theta*)(a + b i) and lets
the attacker query its encryption module with inputs of its own (``real_features(x)`` gives a, and
``release_with_phase(x)`` the released x with the angle, which the attacker could also solve for from
x and a). On the attacker pool both attacks train a decoder dec on (a, image) pairs ("given I, a and
theta*, a decoder can be learned", section 4.3) and a phase estimator; on the test pool they estimate
theta_hat and reconstruct dec(Re[x exp(-i theta_hat)]). The estimators:

* :class:`PhaseInversion` (the paper's): a discriminator D' that tells real features a from wrongly
  decrypted ones Re[x exp(-i theta')] (a logistic critic), and theta_hat = argmax_theta
  D'(Re[x exp(-i theta)]) over a grid of angles;
* :class:`LearnedPhaseInversion`: an estimator trained on the attacker's own (release, theta) pairs
  (:class:`PhaseEstimator`, equivariant to the rotation, loss 1 - cos(theta_hat - theta), the
  regression of (cos theta, sin theta) on the unit circle). It learns whatever the release betrays
  about its phase, e.g. a constant feature c where the image is blank, released as
  exp(i theta)(c + c i), whose phase is theta + pi / 4; on a release whose distribution is
  invariant to rotation it can only guess.

Both report the reconstruction metrics, the angle error E|theta* - theta_hat| wrapped to [0, pi]
(Table 3; a blind guess scores pi / 2), and the server's own view: the accuracy of predicting from
x without theta (``predict_from_release``). Every learner trains to its validation plateau
(:mod:`bench.attacks.training`); ``details["training"]`` gives each one's budget. Both attacks train the
same dec on the same pairs from the same generator state, so in one evaluation the second reuses the
first one's (:meth:`FeatureInversion.train_decoder`), with the same result as if it had trained its own.

The fooling counterpart is itself a real feature, b = Re[x exp(-i (theta* + pi / 2))]: a D' that tells
real features from mixtures but not a from b errs by 0 or pi / 2, about pi / 4 on average, which
is what the paper's Table 3 (0.78-0.84) and our runs show; dec then reconstructs I' instead of I.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.attacks.base import Attack, AttackResult
from bench.attacks.feature_inversion import DECODERS, FeatureInversion
from bench.attacks.training import (
    TrainingReport,
    check_budget,
    check_schedule,
    summarise,
    train_until_plateau,
    validation_split,
)
from bench.errors import BenchError
from bench.metrics.reconstruction import EXPOSURE_DIRECTIONS, reconstruction_metrics, score_reconstructions
from bench.metrics.utility import predictions_correct
from bench.networks.complex import real_part_at
from bench.networks.decoders import released_as_real
from bench.threat_models import Capability, Role, ThreatModel


def angle_error(estimated: Tensor, true: Tensor) -> Tensor:
    """|theta* - theta_hat| per sample, wrapped to [0, pi]."""
    difference = torch.remainder(true - estimated, 2 * math.pi)
    return torch.minimum(difference, 2 * math.pi - difference)


def phase_critic(feature_shape: Sequence[int], width: int = 32) -> nn.Sequential:
    """D': two strided convolutions and a linear score."""
    channels, height, width_px = feature_shape
    size = (math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width_px / 2) / 2))
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, width, 3, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(width * size[0] * size[1], 1),
    )


@torch.no_grad()
def estimate_phase(critic: nn.Module, released: Tensor, grid: int, chunk: int = 512) -> Tensor:
    """theta_hat = argmax over ``grid`` evenly spaced angles of critic(Re[x exp(-i theta)]).

    Each angle scores a whole chunk of samples in one batch; batching the angles as well (repeating
    the features grid times) measured 4.5x slower on a CPU (benchmarks/complex_phase.py).
    """
    angles = torch.arange(grid, device=released.device, dtype=torch.float32) * (2 * math.pi / grid)
    estimates = []
    for start in range(0, len(released), chunk):
        x = released[start : start + chunk]
        scores = torch.stack([critic(real_part_at(x, angle.expand(len(x)))).view(len(x)) for angle in angles])
        estimates.append(angles[scores.argmax(0)])
    return torch.cat(estimates)


class PhaseEstimator(nn.Module):
    """theta_hat of a complex release, by an estimator that turns with the release (equivariant).

    theta is uniform, so the best estimator loses nothing by being equivariant,
    theta_hat(exp(i phi) x) = theta_hat(x) + phi; this one is so by construction, and needs to learn
    only what betrays the phase, never the rotation itself. Stage 1 is complex-linear,
    z1 = sum_p w_p x_p (it finds a fixed-phase offset at fixed positions exactly: a blank background's
    theta + pi / 4); stage 2 turns the release back by z1's angle, which leaves it invariant to theta, and
    a small CNN (feature maps only) reads a complex correction c from it: z = exp(i angle z1) (1 + c).
    theta_hat = angle z. Inputs are scaled by the attacker pool's root-mean-square magnitude.
    """

    def __init__(self, released_shape: Sequence[int], scale: float, width: int = 32) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.weight = nn.Parameter(torch.randn(2, math.prod(released_shape)) / math.sqrt(math.prod(released_shape)))
        self.refine = None
        if len(released_shape) == 3:
            self.refine = nn.Sequential(
                nn.Conv2d(2 * released_shape[0], width, 3, 1, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(width, width, 3, 2, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(width, width, 3, 2, 1),
                nn.LeakyReLU(0.2),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(width, 2),
            )
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    def forward(self, released: Tensor) -> tuple[Tensor, Tensor]:
        """(z1, z): the complex estimates of stage 1 and stage 2, each with angle theta_hat."""
        x = released / self.scale
        z1 = (x.flatten(1) * torch.complex(self.weight[0], self.weight[1])).sum(1)
        turn = z1 / z1.abs().clamp_min(1e-12)
        if self.refine is None:
            return z1, turn
        correction = self.refine(released_as_real(x * turn.conj().view(-1, *([1] * (x.ndim - 1)))))
        return z1, turn * torch.complex(1 + correction[:, 0], correction[:, 1])

    @torch.no_grad()
    def angles(self, released: Tensor, chunk: int = 512) -> Tensor:
        """theta_hat in [-pi, pi]."""
        self.eval()
        return torch.cat([torch.angle(self(released[i : i + chunk])[1]) for i in range(0, len(released), chunk)])


def _cosine_loss(z: Tensor, theta: Tensor) -> Tensor:
    """1 - cos(angle z - theta): 0 at the true angle, 2 opposite it."""
    return 1 - (z * torch.polar(torch.ones_like(theta), -theta)).real / z.abs().clamp_min(1e-12)


def fit_phase_estimator(
    released: Tensor,
    theta: Tensor,
    generator: torch.Generator,
    *,
    epochs: int,
    patience: int,
    validation_fraction: float,
    batch_size: int,
    lr: float,
    width: int = 32,
    description: str = "phase estimator",
    progress: bool = False,
    schedule: str = "constant",
    lr_factor: float = 0.5,
    lr_patience: Optional[int] = None,
) -> tuple[PhaseEstimator, TrainingReport]:
    """Fit :class:`PhaseEstimator` on the attacker's own (release, theta) pairs, to the validation plateau.

    Loss: 1 - cos(theta_hat - theta) of both stages (stage 1's own term trains the linear read-out directly).
    ``schedule``, ``lr_factor``, ``lr_patience``: the learning-rate schedule (:func:`train_until_plateau`).
    """
    train, validation = validation_split(len(released), validation_fraction, generator)
    scale = released[train].abs().square().mean().sqrt().clamp_min(1e-12).item()
    with torch.random.fork_rng(devices=[]):  # initial weights follow the harness's seed
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        estimator = PhaseEstimator(released.shape[1:], scale, width).to(released.device)

    def loss(model: nn.Module, batch: Tensor, _: torch.Generator) -> Tensor:
        first, second = model(released[batch])
        return (_cosine_loss(first, theta[batch]) + _cosine_loss(second, theta[batch])).mean()

    report = train_until_plateau(
        estimator,
        loss,
        train,
        validation,
        generator,
        max_epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        lr=lr,
        description=description,
        progress=progress,
        schedule=schedule,
        lr_factor=lr_factor,
        lr_patience=lr_patience,
    )
    return estimator, report


class _PhaseAttack(Attack):
    """Estimate the secret phase, then invert the de-rotated feature with a decoder trained on (a, image) pairs.

    Subclasses implement :meth:`fit_estimator`: from the attacker pool's (a, x, theta*), a function
    x -> theta_hat and the estimator's training report.
    """

    abstract = True
    threat_model = ThreatModel.FEATURE_RELEASE
    role = Role.ADVERSARY
    requires = (Capability.PHASE_QUERIES,)
    metric_directions = {
        "mse": "higher",
        "mae": "higher",
        "psnr": "lower",
        "ssim": "lower",
        "angle_error": "higher",
        "server_accuracy": "lower",
        **EXPOSURE_DIRECTIONS,
    }
    primary_metric = "mse"
    #: the estimator's name in ``details["training"]``
    estimator_name: ClassVar[str]

    def _init_common(
        self,
        decoder: str,
        epochs: int,
        patience: int,
        validation_fraction: float,
        lr: float,
        batch_size: int,
        max_attacker_samples: Optional[int],
        max_test_samples: Optional[int],
        progress: bool,
        schedule: str,
        lr_factor: float,
        lr_patience: Optional[int],
    ) -> None:
        if decoder not in DECODERS:
            raise BenchError(f"unknown decoder '{decoder}' for {self.name}; choose one of {sorted(DECODERS)}")
        if batch_size < 1 or lr <= 0:
            raise BenchError(f"{self.name} needs batch_size >= 1 and lr > 0, got {batch_size} and {lr}")
        check_budget(self.name, epochs, patience, validation_fraction)
        check_schedule(self.name, schedule, lr_factor, lr_patience)
        self.schedule, self.lr_factor, self.lr_patience = schedule, lr_factor, lr_patience
        self.decoder, self.epochs, self.patience, self.lr = decoder, epochs, patience, lr
        self.validation_fraction, self.batch_size = validation_fraction, batch_size
        self.max_attacker_samples, self.max_test_samples = max_attacker_samples, max_test_samples
        self.progress = progress

    def fit_estimator(
        self, real: Tensor, released: Tensor, theta: Tensor, generator: torch.Generator
    ) -> tuple[Callable[[Tensor], Tensor], TrainingReport]:
        raise TypeError(f"{type(self).__name__} must implement fit_estimator()")

    @torch.no_grad()
    def _query(self, module, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a, x, theta*) for ``images``, in batches."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size].to(module.device)
            parts.append((module.real_features(batch), *module.release_with_phase(batch)))
        return tuple(torch.cat(part) for part in zip(*parts))  # type: ignore[return-value]

    def run(self, module, datamodule, generator: torch.Generator) -> AttackResult:
        device = module.device
        train_images, _ = datamodule.pool("attacker").tensors()
        test_images, test_labels = datamodule.pool("test").tensors()
        train_images, test_images = train_images[: self.max_attacker_samples], test_images[: self.max_test_samples]
        test_labels = test_labels[: self.max_test_samples].to(device)
        # the client's randomness (its secret angles, its fooling counterparts) follows this attack's generator, so
        # the attack gives the same result whichever attacks ran before it in the evaluation
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
            train_a, train_x, train_theta = self._query(module, train_images)
            _, test_x, test_theta = self._query(module, test_images)

        # dec first: it depends only on the (a, image) pairs, the decoder's budget and the generator's state,
        # which both phase attacks share in an evaluation, so the second one reuses the first one's fit
        inverter = FeatureInversion(
            self.decoder,
            self.epochs,
            self.patience,
            self.validation_fraction,
            self.batch_size,
            self.lr,
            progress=self.progress,
            schedule=self.schedule,
            lr_factor=self.lr_factor,
            lr_patience=self.lr_patience,
        )
        decoder, decoder_used, decoder_report = inverter.train_decoder(module, train_a, train_images, generator)
        estimate, estimator_report = self.fit_estimator(train_a, train_x, train_theta, generator)
        estimated = estimate(test_x)
        with torch.no_grad():
            reconstructed = inverter.decode(decoder, real_part_at(test_x, estimated))
            with_true_phase = inverter.decode(decoder, real_part_at(test_x, test_theta))
            server_logits = torch.cat(
                [
                    module.predict_from_release(test_x[i : i + self.batch_size])
                    for i in range(0, len(test_x), self.batch_size)
                ]
            )
        test_images = test_images.to(device)
        metrics, exposure, examples = score_reconstructions(reconstructed, test_images, datamodule)
        metrics["angle_error"] = angle_error(estimated, test_theta).mean().item()
        # top-1, or for attribute vectors the fraction of attributes right (the utility's accuracy)
        metrics["server_accuracy"] = predictions_correct(server_logits, test_labels, module.spec).mean().item()
        details = {
            "decoder_used": decoder_used,
            "attacker_samples": len(train_images),
            "test_samples": len(test_images),
            # the same decoder given the true phase: what the phase hides
            "true_phase_mae": reconstruction_metrics(with_true_phase, test_images)["mae"],
            **summarise({"decoder": decoder_report, self.estimator_name: estimator_report}, "decoder"),
            **exposure,
        }
        return AttackResult(metrics, examples=examples, details=details)


class PhaseInversion(_PhaseAttack):
    """Estimate the secret phase with a discriminator D' (the paper's strategy 1), then invert the de-rotated feature.

    Default budget: the decoder's as :class:`~bench.attacks.FeatureInversion` had it before issue 27 (constant
    Adam 1e-3, at most 1000 epochs, patience 20: the plateau on the unprotected MNIST baseline, twice the budget
    -1.4 % MSE); D' at most 200 epochs (on the
    complex LeNet of ``complex/mnist_shared`` D' stops at epoch 104, dec at 475; twice the budget: +1.6 % MSE).

    Args:
        decoder: the inversion decoder (``mirror``, ``upsampling``, ``unet`` (the paper's) or ``unet_small``).
        epochs / lr: the decoder's maximum passes over the attacker pool, and its Adam learning rate.
        patience: epochs without a validation improvement before the decoder, or D', stops.
        validation_fraction: share of the attacker pool each learner holds out for early stopping.
        critic_epochs / critic_lr: D''s maximum passes and learning rate.
        grid: angles tried per sample for theta_hat (resolution 2 pi / grid; 36: ten degrees).
        batch_size: mini-batch size of both.
        max_attacker_samples / max_test_samples: cap the pools (None: all of them).
        progress: show progress bars.
        schedule / critic_schedule: the learning-rate schedule of the decoder and of D'
            (:func:`~bench.attacks.training.train_until_plateau`): ``constant`` (the default of both, not yet
            measured here with the others), ``plateau`` (the rate times ``lr_factor`` after ``lr_patience`` + 1
            epochs without a validation improvement; ``lr_patience`` None: a third of ``patience``) or ``onecycle``
            (one cycle of 60 epochs peaking at ``lr``, then the plateau schedule from ``lr / 25``).
        lr_factor / lr_patience: the plateau schedule's decay factor and patience, for every learner of the attack.
    """

    name = "phase_inversion"
    estimator_name = "critic"
    budget_args = ("epochs", "patience", "critic_epochs")

    def __init__(
        self,
        decoder: str = "mirror",
        epochs: int = 1000,
        patience: int = 20,
        validation_fraction: float = 0.1,
        lr: float = 1e-3,
        critic_epochs: int = 200,
        critic_lr: float = 1e-3,
        grid: int = 36,
        batch_size: int = 64,
        max_attacker_samples: Optional[int] = None,
        max_test_samples: Optional[int] = None,
        progress: bool = True,
        schedule: str = "constant",
        critic_schedule: str = "constant",
        lr_factor: float = 0.5,
        lr_patience: Optional[int] = None,
    ) -> None:
        self._init_common(
            decoder,
            epochs,
            patience,
            validation_fraction,
            lr,
            batch_size,
            max_attacker_samples,
            max_test_samples,
            progress,
            schedule,
            lr_factor,
            lr_patience,
        )
        if critic_epochs < 1 or critic_lr <= 0:
            raise BenchError(
                f"phase_inversion needs critic_epochs >= 1 and critic_lr > 0, got {critic_epochs} and {critic_lr}"
            )
        if grid < 2:
            raise BenchError(f"grid (angles tried per sample) must be at least 2, got {grid}")
        self.critic_epochs, self.critic_lr, self.grid = critic_epochs, critic_lr, grid
        check_schedule(self.name, critic_schedule)
        self.critic_schedule = critic_schedule

    def fit_estimator(self, real, released, theta, generator):
        """Logistic D': real features a against Re[x exp(-i theta')].

        The angles theta' are at least one grid step from theta*.
        """
        train, validation = validation_split(len(real), self.validation_fraction, generator)
        with torch.random.fork_rng(devices=[]):  # initial weights follow the harness's seed
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
            critic = phase_critic(real.shape[1:]).to(real.device)
        step = 2 * math.pi / self.grid

        def loss(model: nn.Module, batch: Tensor, random: torch.Generator) -> Tensor:
            offset = step + torch.rand(len(batch), generator=random).to(real.device) * (2 * math.pi - 2 * step)
            fake = real_part_at(released[batch], theta[batch] + offset)
            scores = model(torch.cat([real[batch], fake]))
            targets = torch.cat([torch.ones(len(batch)), torch.zeros(len(batch))]).to(scores.device)
            return F.binary_cross_entropy_with_logits(scores.squeeze(1), targets)

        report = train_until_plateau(
            critic,
            loss,
            train,
            validation,
            generator,
            max_epochs=self.critic_epochs,
            patience=self.patience,
            batch_size=self.batch_size,
            lr=self.critic_lr,
            description=f"{self.name} critic",
            progress=self.progress,
            schedule=self.critic_schedule,
            lr_factor=self.lr_factor,
            lr_patience=self.lr_patience,
        )
        return (lambda x: estimate_phase(critic, x, self.grid)), report


class LearnedPhaseInversion(_PhaseAttack):
    """Estimate the secret phase with a network trained on the attacker's own (release, theta) pairs, then invert.

    Stronger than D' wherever the release's distribution is not invariant to rotation
    (:class:`PhaseEstimator`, :func:`fit_phase_estimator`). On the complex LeNet trained on the MNIST test
    set (``complex/mnist_shared``, 10 epochs, the default budgets: dec stops at epoch 475 of 1000, the
    estimator at 286 of 500, both on their plateau) it recovers theta to 0.0019 rad (D': 0.82) from the
    blank background's phase theta + pi / 4, and reconstructs at MSE 0.0018 / PSNR 28.0 dB (D': 0.067 /
    18.0 dB; the original network's dec(a): 0.00099 / 30.4 dB); twice the budget: -8.0 % MSE.

    Default budget: the decoder's as :class:`~bench.attacks.FeatureInversion` had it before issue 27 (constant
    Adam 1e-3, at most 1000 epochs, patience 20);
    the estimator at most 500 epochs with the same patience (enough on the complex LeNet above).

    Args:
        decoder / epochs / lr / patience / validation_fraction / batch_size: as :class:`PhaseInversion`.
        estimator_epochs / estimator_lr: the phase estimator's maximum passes and Adam learning rate.
        estimator_width: channels of the estimator's convolutions.
        max_attacker_samples / max_test_samples: cap the pools (None: all of them).
        progress: show progress bars.
        schedule / estimator_schedule: the learning-rate schedule of the decoder and of the estimator, as
            :class:`PhaseInversion`'s ``schedule`` (both ``constant`` by default, not yet measured with the others).
        lr_factor / lr_patience: as :class:`PhaseInversion`.
    """

    name = "learned_phase_inversion"
    estimator_name = "estimator"
    budget_args = ("epochs", "patience", "estimator_epochs")

    def __init__(
        self,
        decoder: str = "mirror",
        epochs: int = 1000,
        patience: int = 20,
        validation_fraction: float = 0.1,
        lr: float = 1e-3,
        estimator_epochs: int = 500,
        estimator_lr: float = 1e-3,
        estimator_width: int = 32,
        batch_size: int = 64,
        max_attacker_samples: Optional[int] = None,
        max_test_samples: Optional[int] = None,
        progress: bool = True,
        schedule: str = "constant",
        estimator_schedule: str = "constant",
        lr_factor: float = 0.5,
        lr_patience: Optional[int] = None,
    ) -> None:
        self._init_common(
            decoder,
            epochs,
            patience,
            validation_fraction,
            lr,
            batch_size,
            max_attacker_samples,
            max_test_samples,
            progress,
            schedule,
            lr_factor,
            lr_patience,
        )
        if estimator_epochs < 1 or estimator_lr <= 0 or estimator_width < 1:
            raise BenchError(
                f"learned_phase_inversion needs estimator_epochs >= 1, estimator_lr > 0 and estimator_width >= 1, "
                f"got {estimator_epochs}, {estimator_lr} and {estimator_width}"
            )
        self.estimator_epochs, self.estimator_lr, self.estimator_width = estimator_epochs, estimator_lr, estimator_width
        check_schedule(self.name, estimator_schedule)
        self.estimator_schedule = estimator_schedule

    def fit_estimator(self, real, released, theta, generator):
        estimator, report = fit_phase_estimator(
            released,
            theta,
            generator,
            epochs=self.estimator_epochs,
            patience=self.patience,
            validation_fraction=self.validation_fraction,
            batch_size=self.batch_size,
            lr=self.estimator_lr,
            width=self.estimator_width,
            description=f"{self.name} estimator",
            progress=self.progress,
            schedule=self.estimator_schedule,
            lr_factor=self.lr_factor,
            lr_patience=self.lr_patience,
        )
        return estimator.angles, report
