"""Phase estimation then inversion: the attack on features hidden in a random phase (Xiang et al., strategy 1).

Threat model: feature release, against a method that releases x = exp(i theta*)(a + b i) and lets
the attacker query its encryption module with inputs of its own (``real_features(x)`` gives a, and
``release_with_phase(x)`` the released x with the angle, which the attacker could also solve for from
x and a). On the attacker pool it trains

* a discriminator D' that tells real features a from wrongly decrypted ones Re[x exp(-i theta')]
  (a logistic critic; any score works for the argmax below), and
* a decoder dec on (a, image) pairs ("given I, a and theta*, a decoder can be learned", section 4.3).

On the test pool it estimates theta_hat = argmax_theta D'(Re[x exp(-i theta)]) over a grid of
angles and reconstructs dec(Re[x exp(-i theta_hat)]). It reports the reconstruction metrics, the
angle error E|theta* - theta_hat| wrapped to [0, pi] (Table 3; a blind guess scores pi / 2), and the
server's own view: the accuracy of predicting from x without theta (``predict_from_release``).

The fooling counterpart is itself a real feature, b = Re[x exp(-i (theta* + pi / 2))]: a D' that tells
real features from mixtures but not a from b errs by 0 or pi / 2, about pi / 4 on average, which
is what the paper's Table 3 (0.78-0.84) and our runs show; dec then reconstructs I' instead of I.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.attacks.base import Attack, AttackResult
from bench.attacks.feature_inversion import DECODERS, FeatureInversion
from bench.errors import BenchError
from bench.metrics.reconstruction import reconstruction_metrics
from bench.metrics.utility import predictions_correct
from bench.networks.complex import real_part_at
from bench.networks.unet import unet_decoder
from bench.threat_models import Capability, Role, ThreatModel

# the paper's decoder (section 4.1), for this attack and for feature_inversion's dec(x)
DECODERS.setdefault("unet", lambda client, released_shape, image_shape: unet_decoder(released_shape, image_shape))
# the original U-Net's two convolutions per block, narrower: the same decoder at a CPU's budget
DECODERS.setdefault("unet_small", lambda client, released_shape, image_shape: unet_decoder(released_shape, image_shape, width=16,
                                                                                          convs_per_block=2))


def angle_error(estimated: Tensor, true: Tensor) -> Tensor:
    """|theta* - theta_hat| per sample, wrapped to [0, pi]."""
    difference = torch.remainder(true - estimated, 2 * math.pi)
    return torch.minimum(difference, 2 * math.pi - difference)


def phase_critic(feature_shape: Sequence[int], width: int = 32) -> nn.Sequential:
    """D': two strided convolutions and a linear score."""
    channels, height, width_px = feature_shape
    size = (math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width_px / 2) / 2))
    return nn.Sequential(nn.Conv2d(channels, width, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, width, 3, 2, 1), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.Linear(width * size[0] * size[1], 1))


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


class PhaseInversion(Attack):
    """Estimate the secret phase with a discriminator D', then invert the de-rotated feature.

    Args:
        decoder: the inversion decoder (``mirror``, ``upsampling``, ``unet`` (the paper's) or ``unet_small``).
        epochs / lr: decoder training passes over the attacker pool, and its Adam learning rate.
        critic_epochs / critic_lr: the same for D'.
        grid: angles tried per sample for theta_hat (resolution 2 pi / grid; 36: ten degrees).
        batch_size: mini-batch size of both.
        max_attacker_samples / max_test_samples: cap the pools (None: all of them).
        progress: show progress bars.
    """

    name = "phase_inversion"
    threat_model = ThreatModel.FEATURE_RELEASE
    role = Role.ADVERSARY
    requires = (Capability.PHASE_QUERIES,)
    metric_directions = {"mse": "higher", "mae": "higher", "psnr": "lower", "ssim": "lower", "angle_error": "higher",
                         "server_accuracy": "lower"}
    primary_metric = "mse"

    def __init__(self, decoder: str = "mirror", epochs: int = 30, lr: float = 1e-3, critic_epochs: int = 10,
                 critic_lr: float = 1e-3, grid: int = 36, batch_size: int = 128, max_attacker_samples: Optional[int] = None,
                 max_test_samples: Optional[int] = None, progress: bool = True) -> None:
        if decoder not in DECODERS:
            raise BenchError(f"unknown decoder '{decoder}' for phase_inversion; choose one of {sorted(DECODERS)}")
        if min(epochs, critic_epochs, batch_size) < 1 or min(lr, critic_lr) <= 0:
            raise BenchError(f"phase_inversion needs epochs, critic_epochs, batch_size >= 1 and learning rates > 0, "
                             f"got {epochs}, {critic_epochs}, {batch_size}, {lr}, {critic_lr}")
        if grid < 2:
            raise BenchError(f"grid (angles tried per sample) must be at least 2, got {grid}")
        self.decoder, self.epochs, self.lr = decoder, epochs, lr
        self.critic_epochs, self.critic_lr, self.grid = critic_epochs, critic_lr, grid
        self.batch_size = batch_size
        self.max_attacker_samples, self.max_test_samples = max_attacker_samples, max_test_samples
        self.progress = progress

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
        train_a, train_x, train_theta = self._query(module, train_images)
        _, test_x, test_theta = self._query(module, test_images)

        with torch.random.fork_rng(devices=[]):  # initial weights follow the harness's seed
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
            critic = phase_critic(train_a.shape[1:]).to(device)
            inverter = FeatureInversion(self.decoder, self.epochs, self.batch_size, self.lr, progress=self.progress)
            decoder, decoder_used = inverter.build_decoder(module, train_a[:2].cpu(), train_images.shape[1:])
        self._fit_critic(critic, train_a, train_x, train_theta, generator)
        critic.eval()
        estimated = estimate_phase(critic, test_x, self.grid)

        decoder = decoder.to(device)
        inverter._fit(decoder, train_a, train_images.to(device), generator)
        decoder.eval()
        with torch.no_grad():
            reconstructed = self._decode(decoder, real_part_at(test_x, estimated))
            with_true_phase = self._decode(decoder, real_part_at(test_x, test_theta))
            server_logits = torch.cat([module.predict_from_release(test_x[i : i + self.batch_size])
                                       for i in range(0, len(test_x), self.batch_size)])
        test_images = test_images.to(device)
        metrics = reconstruction_metrics(reconstructed, test_images)
        metrics["angle_error"] = angle_error(estimated, test_theta).mean().item()
        # top-1, or for attribute vectors the fraction of attributes right (the utility's accuracy)
        metrics["server_accuracy"] = predictions_correct(server_logits, test_labels, module.spec).mean().item()
        details = {"decoder_used": decoder_used, "attacker_samples": len(train_images), "test_samples": len(test_images),
                   # the same decoder given the true phase: what the phase hides
                   "true_phase_mae": reconstruction_metrics(with_true_phase, test_images)["mae"]}
        return AttackResult(metrics, examples=(test_images[:16].cpu(), reconstructed[:16].cpu()), details=details)

    def _decode(self, decoder: nn.Module, features: Tensor) -> Tensor:
        return torch.cat([decoder(features[i : i + self.batch_size]) for i in range(0, len(features), self.batch_size)])

    def _fit_critic(self, critic: nn.Module, real: Tensor, released: Tensor, theta: Tensor, generator: torch.Generator) -> None:
        """Logistic D': real features a against Re[x exp(-i theta')] at angles theta' at least one grid step from theta*."""
        optimizer = torch.optim.Adam(critic.parameters(), lr=self.critic_lr)
        step = 2 * math.pi / self.grid
        critic.train()
        for _ in tqdm(range(self.critic_epochs), desc=f"{self.name} critic", disable=not self.progress, leave=False):
            order = torch.randperm(len(real), generator=generator).to(real.device)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                offset = step + torch.rand(len(batch), generator=generator).to(real.device) * (2 * math.pi - 2 * step)
                fake = real_part_at(released[batch], theta[batch] + offset)
                scores = critic(torch.cat([real[batch], fake]))
                targets = torch.cat([torch.ones(len(batch)), torch.zeros(len(batch))]).to(scores.device)
                loss = F.binary_cross_entropy_with_logits(scores.squeeze(1), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
