"""Complex-valued neural networks for privacy protection (Xiang et al., ICLR 2020), and their baselines.

The client's encryption module g computes the real feature a = g(I) (Eq. 1, the network's first
layers plus the generator, a 3x3 convolution with K filters), takes the feature b = g(I') of
another sample of the batch as the fooling counterpart, and releases x = exp(i theta)(a + b i)
with theta uniform and kept secret (Eq. 2). The server's processing module Phi is built from
rotation-equivariant layers (Eq. 4-7, :mod:`bench.networks.complex`), so the client decrypts its
answer h = Phi(x) as y = d(Re[exp(-i theta) h]) (Eq. 3).

A WGAN critic D (a convolution and a fully-connected layer) tells a from the fakes
a' = Re[(a + b i) exp(i dtheta)] for k - 1 angles dtheta != 0 (Eq. 8; k is ``phases_per_sample``); g, Phi
and d minimise the task loss plus Eq. 8 (Eq. 9), while D maximises Eq. 8 in ``n_critic`` steps per generator step, kept
Lipschitz by weight clipping (Arjovsky et al., the paper's setting) or a gradient penalty.

Baselines of section 4.3, with the same split: the original real-valued network, the network with
the generator's additional layer but no adversarial loss, and noisy features a + gamma * eps (gamma is
``noise_level``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from bench.datamodules.base import DataSpec
from bench.deprecation import keep_current_names, renamed_argument
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.modules.split_network import EncoderRelease
from bench.networks.complex import build_modules, encoder_shape, real_part_at, rotate
from bench.networks.registry import Role, build_network, resolve_network
from bench.spec import TASKS
from bench.threat_models import Capability, ThreatModel

LIPSCHITZ = ("clip", "gp")


def derangement(n: int, device: torch.device) -> Tensor:
    """A random permutation with no fixed point: sample i is paired with another sample I' != I."""
    order = torch.randperm(n, device=device)
    shift = int(torch.randint(1, n, ()))
    paired = torch.empty_like(order)
    paired[order] = order.roll(shift)
    return paired


def fake_angles(k: int, n: int, device: torch.device) -> Tensor:
    """k - 1 nonzero dtheta per sample, one in each of the sectors 2 pi j / k, j = 1 .. k - 1 (stratified)."""
    centres = 2 * math.pi * torch.arange(1, k, device=device, dtype=torch.float32) / k
    return centres.view(-1, 1) + (torch.rand(k - 1, n, device=device) - 0.5) * (2 * math.pi / k)


def critic_network(feature_shape: tuple[int, ...], width: int = 64) -> nn.Sequential:
    """D of section 4.1: a convolutional layer and a fully-connected layer, one score per feature map."""
    channels, height, width_px = feature_shape
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(width * math.ceil(height / 2) * math.ceil(width_px / 2), 1),
    )


class ComplexNet(PrivacyModule):
    """The complex-valued network: encryption g (client), processing Phi (server), decryption d (client).

    Args:
        network: ``lenet5``, ``vgg16``, ``alexnet`` or ``resnet<depth>_<alpha|beta>`` (depth 20, 32, 44, 56, 110;
            :mod:`bench.networks.registry`).
        generator_channels: K, the generator's filters (None: as many as the encoder's last layer).
        phases_per_sample: the paper's k: phases per sample in Eq. 8, the true one and k - 1 fakes (the
            feature is to be indistinguishable from k - 1 others, the k of the paper's k-anonymity; ``k`` is
            its deprecated name).
        n_critic: critic steps per generator step (WGAN's 5).
        lipschitz: ``clip`` (weight clipping to +-clip_value, RMSprop; WGAN) or ``gp`` (gradient penalty
            with weight gp_weight, Adam(0.5, 0.9); WGAN-GP).
        adv_weight: weight of the adversarial loss L in Eq. 9 (the paper's 1).
        lr / critic_lr: learning rates of g, Phi, d (Adam) and of D.
        bank_size: real features kept from training for batches of one sample, which have no other
            sample to draw the fooling counterpart b from.
        encoder_bias: False builds the encryption module without additive terms (no biases in its
            convolutions and generator, input scaled by 1 / std but not centred; plain convolutional
            encoders only). With biases, a blank background has one constant feature c in every image,
            so the fooling counterpart b = g(I') equals a there and the release exp(i theta)(c + c i)
            gives theta away (the learned phase estimator finds it); without them the background is 0.
    """

    threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)
    capabilities = (Capability.PHASE_QUERIES,)
    display_name = "Complex-valued"
    tasks = TASKS  # classes (CIFAR, CUB-200) or CelebA's 40 attributes: the decryption module's last layer is as wide

    def __init__(
        self,
        network: str = "lenet5",
        generator_channels: Optional[int] = None,
        phases_per_sample: int = 4,
        n_critic: int = 5,
        lipschitz: str = "clip",
        clip_value: float = 0.01,
        gp_weight: float = 10.0,
        adv_weight: float = 1.0,
        lr: float = 1e-3,
        critic_lr: float = 5e-5,
        weight_decay: float = 0.0,
        bank_size: int = 8,
        encoder_bias: bool = True,
        data_spec: Optional[DataSpec] = None,
        k: Optional[int] = None,
    ) -> None:
        phases_per_sample = renamed_argument(ComplexNet, "k", k, phases_per_sample, default=4)
        network = resolve_network(network, Role.COMPLEX, "ComplexNet")
        if phases_per_sample < 2:
            raise BenchError(
                f"phases_per_sample (k of Eq. 8) must be at least 2, one real and k - 1 fakes, got {phases_per_sample}"
            )
        if n_critic < 1:
            raise BenchError(f"n_critic (critic steps per generator step) must be at least 1, got {n_critic}")
        if lipschitz not in LIPSCHITZ:
            raise BenchError(f"lipschitz must be 'clip' (WGAN) or 'gp' (WGAN-GP), got '{lipschitz}'")
        if clip_value <= 0 or gp_weight < 0 or adv_weight < 0 or critic_lr <= 0:
            raise BenchError(
                f"need clip_value > 0, gp_weight >= 0, adv_weight >= 0 and critic_lr > 0, "
                f"got {clip_value}, {gp_weight}, {adv_weight}, {critic_lr}"
            )
        if bank_size < 1:
            raise BenchError(f"bank_size must be at least 1, got {bank_size}")
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        keep_current_names(self.hparams, ComplexNet, phases_per_sample=phases_per_sample, network=network)
        self.automatic_optimization = False
        plans = build_network(network, Role.COMPLEX, self.spec)
        if generator_channels is None:
            generator_channels = encoder_shape(plans, self.spec)[0]
        modules = build_modules(
            plans, self.spec, complex_valued=True, generator_channels=generator_channels, encoder_bias=encoder_bias
        )
        self.encoder, self.processing, self.decryption = modules.encoder, modules.processing, modules.decryption
        self.critic = critic_network(modules.feature_shape)
        self.register_buffer("fooling_bank", torch.zeros(bank_size, *modules.feature_shape))
        self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))

    @property
    def label(self) -> str:
        return super().label if self.hparams.encoder_bias else f"{super().label} (bias-free encoder)"

    # ------------------------------------------------------------------ the three modules
    def real_features(self, images: Tensor) -> Tensor:
        """a = g(I), Eq. 1: the encryption module's real feature before the rotation (attackers query it)."""
        return self.encoder(images)

    def fooling_counterpart(self, a: Tensor) -> Tensor:
        """b = g(I') for another sample I' of the batch (section 3.2); from the training bank for a lone sample."""
        if len(a) > 1:
            return a[derangement(len(a), a.device)]
        filled = int(self.bank_filled.clamp(min=1, max=len(self.fooling_bank)))
        return self.fooling_bank[torch.randint(filled, (len(a),), device=a.device)]

    def encrypt(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 2, x = exp(i theta)(a + b i) with theta ~ U[0, 2 pi) per sample; returns (x, theta)."""
        theta = torch.rand(len(a), device=a.device) * (2 * math.pi)
        return rotate(torch.complex(a, b), theta), theta

    def release_with_phase(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The released feature and the secret angle the client keeps."""
        a = self.real_features(images)
        return self.encrypt(a, self.fooling_counterpart(a))

    def decrypt(self, h: Tensor, theta: Tensor) -> Tensor:
        """Eq. 3, y = d(Re[exp(-i theta) h])."""
        return self.decryption(real_part_at(h, theta))

    def forward(self, images: Tensor) -> Tensor:
        released, theta = self.release_with_phase(images)
        return self.decrypt(self.processing(released), theta)

    # ------------------------------------------------------------------ the feature-release contract
    def release(self, images: Tensor) -> Tensor:
        return self.release_with_phase(images)[0]

    def predict_from_release(self, released: Tensor) -> Tensor:
        """What the server can predict on its own: it runs Phi and d but must guess the phase (theta = 0)."""
        return self.decrypt(self.processing(released), torch.zeros(len(released), device=released.device))

    def client_network(self) -> nn.Module:
        return self.encoder

    # ------------------------------------------------------------------ Eq. 8-9
    def fakes(self, a: Tensor, b: Tensor) -> Tensor:
        """a' = Re[(a + b i) exp(i dtheta)] = a cos dtheta - b sin dtheta for k - 1 angles per sample, stacked."""
        angles = fake_angles(self.hparams.phases_per_sample, len(a), a.device).view(-1, len(a), *([1] * (a.ndim - 1)))
        return (a * torch.cos(angles) - b * torch.sin(angles)).flatten(0, 1)

    def adversarial_loss(self, a: Tensor, b: Tensor) -> Tensor:
        """Eq. 8, L = E[D(a)] - E[D(a')]: the critic maximises it, the encryption module minimises it."""
        return self.critic(a).mean() - self.critic(self.fakes(a, b)).mean()

    def gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        """WGAN-GP: (|grad D| - 1)^2 on random interpolates of real and fake features."""
        real = real.repeat(len(fake) // len(real), *([1] * (real.ndim - 1)))
        mix = torch.rand(len(real), *([1] * (real.ndim - 1)), device=real.device)
        interpolates = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradients,) = torch.autograd.grad(self.critic(interpolates).sum(), interpolates, create_graph=True)
        return (gradients.flatten(1).norm(dim=1) - 1).square().mean()

    def configure_optimizers(self):
        main = [*self.encoder.parameters(), *self.processing.parameters(), *self.decryption.parameters()]
        task = torch.optim.Adam(main, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lipschitz == "clip":
            critic = torch.optim.RMSprop(self.critic.parameters(), lr=self.hparams.critic_lr)
        else:
            critic = torch.optim.Adam(self.critic.parameters(), lr=self.hparams.critic_lr, betas=(0.5, 0.9))
        return [task, critic]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        task_optimizer, critic_optimizer = self.optimizers()
        with torch.no_grad():  # g is not updated by the critic steps: its features are computed once
            real = self.real_features(images)
        for _ in range(self.hparams.n_critic):
            a, b = real, self.fooling_counterpart(real)  # a new pairing I' (and new angles) every step
            critic_loss = -self.adversarial_loss(a, b)  # D maximises Eq. 8
            if self.hparams.lipschitz == "gp":
                critic_loss = critic_loss + self.hparams.gp_weight * self.gradient_penalty(a, self.fakes(a, b))
            self.manual_step(critic_optimizer, critic_loss, "critic")
            if self.hparams.lipschitz == "clip":
                with torch.no_grad():
                    for parameter in self.critic.parameters():
                        parameter.clamp_(-self.hparams.clip_value, self.hparams.clip_value)

        self.critic.requires_grad_(False)  # D is the fixed adversary of the generator step
        a = self.real_features(images)
        b = self.fooling_counterpart(a)
        released, theta = self.encrypt(a, b)
        task = self.task_loss(self.decrypt(self.processing(released), theta), labels)
        adversarial = self.adversarial_loss(a, b)
        self.manual_step(task_optimizer, task + self.hparams.adv_weight * adversarial, "task")  # Eq. 9
        self.critic.requires_grad_(True)
        self._remember(a.detach())
        if self.logging_step:
            self.log_dict(
                {
                    "train/loss": task.detach(),
                    "train/adversarial": adversarial.detach(),
                    "train/critic": critic_loss.detach(),
                },
                prog_bar=True,
            )

    @torch.no_grad()
    def _remember(self, a: Tensor) -> None:
        count = min(len(a), len(self.fooling_bank))
        self.fooling_bank[:count] = a[:count]
        self.bank_filled.fill_(max(int(self.bank_filled), count))


class ComplexNetBaseline(EncoderRelease, PrivacyModule):
    """The baselines of section 4.3, real-valued and split as the complex-valued network of the same family.

    The DNN's feature-release contract (:class:`~bench.modules.split_network.EncoderRelease`): the
    client releases ``encoder(x)``, the server runs ``classifier`` (processing, then decryption).
    ``SplitNetwork`` itself splits LeNet after both convolutions; the paper compares every network
    at the complex network's split, after the first.

    Args:
        network: as :class:`ComplexNet`.
        variant: ``original`` (the original network), ``additional_layers`` (plus the generator's
            3x3 convolution with K filters, without the adversarial loss) or ``noisy`` (a + gamma * eps).
        noise_level: the paper's gamma, the noise of ``noisy`` relative to the feature's average magnitude
            (the paper's 0.2, 0.5, 1.0; ``gamma`` is its deprecated name).
        generator_channels: K for ``additional_layers`` (None: the encoder's width).
    """

    threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)
    tasks = TASKS
    VARIANTS = {
        "original": "Original network",
        "additional_layers": "Network with additional layers",
        "noisy": "Noisy features",
    }

    def __init__(
        self,
        network: str = "lenet5",
        variant: str = "original",
        noise_level: float = 0.5,
        generator_channels: Optional[int] = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        data_spec: Optional[DataSpec] = None,
        gamma: Optional[float] = None,
    ) -> None:
        noise_level = renamed_argument(ComplexNetBaseline, "gamma", gamma, noise_level, default=0.5)
        network = resolve_network(network, Role.COMPLEX, "ComplexNetBaseline")
        if variant not in self.VARIANTS:
            raise BenchError(f"variant must be one of {sorted(self.VARIANTS)}, got '{variant}'")
        if noise_level < 0:
            raise BenchError(f"noise_level (gamma of the noisy features) must be non-negative, got {noise_level}")
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        keep_current_names(self.hparams, ComplexNetBaseline, noise_level=noise_level, network=network)
        plans = build_network(network, Role.COMPLEX, self.spec)
        if variant == "additional_layers" and generator_channels is None:
            generator_channels = encoder_shape(plans, self.spec)[0]
        modules = build_modules(
            plans,
            self.spec,
            complex_valued=False,
            generator_channels=generator_channels if variant == "additional_layers" else None,
        )
        self.encoder = modules.encoder
        self.classifier = nn.Sequential(modules.processing, modules.decryption)

    @property
    def label(self) -> str:
        name = self.VARIANTS[self.hparams.variant]
        # the paper's symbol, which heads the noisy columns of its Tables 1-2
        return f"{name} (gamma={self.hparams.noise_level})" if self.hparams.variant == "noisy" else name

    def release(self, x: Tensor) -> Tensor:
        a = self.encoder(x)
        if self.hparams.variant != "noisy" or self.hparams.noise_level == 0:
            return a
        # eps: Gaussian noise rescaled to the average activation magnitude of a, per sample (section 4.3)
        noise = torch.randn_like(a)
        scale = a.abs().flatten(1).mean(1) / noise.abs().flatten(1).mean(1).clamp_min(1e-12)
        return a + self.hparams.noise_level * noise * scale.view(-1, *([1] * (a.ndim - 1)))
