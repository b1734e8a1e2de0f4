"""Collaborative learning with gradient sharing (FedSGD), the setting of ATS (Gao et al., CVPR 2021).

N participants hold equal, identically distributed data. At every step each participant transforms
its own mini-batch with the transformation policy (ATS's defense, section 4.4), computes the
gradient of its loss on it, applies the gradient defense (Gaussian or Laplacian noise, or layer-wise
pruning: the baselines of Table 3) and shares the result; the server averages the shared gradients
and updates the global model with SGD (momentum 0.9, weight decay 5e-4, learning rate divided by
10 at 3/8, 5/8 and 7/8 of training: appendix A). All participants' gradients come from one
``torch.func.vmap`` over participants, not a loop.

Data: each training batch of ``batch_size`` samples is split into ``participants`` mini-batches
(under DDP each rank simulates its share of the participants). With the training pool shuffled
every epoch, every participant's mini-batch is a fresh i.i.d. draw from the same distribution, which
is what equal i.i.d. shards give FedSGD; participants do not keep a fixed shard across epochs.
Batch-norm: each participant normalises with its own batch statistics; the running statistics
become the mean of the participants' updates (what averaging their buffers would give).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from bench.datamodules.base import DataSpec
from bench.deprecation import keep_current_names, renamed_argument
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.networks.registry import Role, build_network, resolve_network
from bench.threat_models import SharedGradients, ThreatModel
from bench.transforms.policy import load_policy


def prune_gradients(gradients: dict[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Layer-wise gradient pruning: in every (P, *shape) tensor keep each participant's top (1 - ratio)
    fraction of entries by magnitude (at least one) and zero the rest (Table 3's "Pruning (70%)": ratio 0.7)."""
    pruned = {}
    for name, gradient in gradients.items():
        flat = gradient.reshape(gradient.shape[0], -1)
        keep = max(1, round(flat.shape[1] * (1.0 - ratio)))
        index = flat.abs().topk(keep, dim=1).indices
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, index, True)
        pruned[name] = (flat * mask).view_as(gradient)
    return pruned


def add_noise(
    gradients: dict[str, Tensor], kind: str, scale: float, generator: Optional[torch.Generator] = None
) -> dict[str, Tensor]:
    """Gaussian N(0, scale^2) or Laplacian Laplace(0, scale) noise on every shared gradient entry."""
    noisy = {}
    for name, gradient in gradients.items():
        if kind == "gaussian":
            noise = torch.randn(gradient.shape, generator=generator, dtype=gradient.dtype)
        else:  # the difference of two Exp(1) draws is Laplace(0, 1)
            draws = torch.empty((2, *gradient.shape), dtype=gradient.dtype).exponential_(generator=generator)
            noise = draws[0] - draws[1]
        noisy[name] = gradient + scale * noise.to(gradient.device)
    return noisy


class Collaborative(PrivacyModule):
    """FedSGD with N participants; optional transformation policy (ATS) and gradient defenses.

    Args:
        network: ``convnet`` (the 8-layer ConvNet) or ``resnet20`` (:mod:`bench.networks.registry`).
        width: the network's base width (None: the paper's, 64 for the ConvNet, 16 for ResNet-20).
        participants: number of participants N (the paper's 10); each training batch is split among them.
        policy: transformation policy every participant applies to its batch: a policy string
            (``3-1-7``, hybrid ``3-1-7+43-18-18``), a policy file written by ``bench.ats.search``, or None.
        crop_flip: with a policy, first RandomCrop(padding 4) and a horizontal flip, as the reference's
            training pipeline does whenever a policy is set (``bench.transforms.policy``).
        transform_variant: the operations' definitions, ``reference`` (the authors' code: enhance up to
            0.5, fixed-sign rotation with grey fill) or ``autoaugment`` (``docs/ats_transformations.md``).
        defense: ``none``, ``gaussian`` or ``laplacian`` (noise of scale ``noise_scale`` on each
            shared gradient) or ``pruning`` (layer-wise, ``prune_ratio`` of each layer's entries zeroed).
        noise_scale: standard deviation (Gaussian) or scale b (Laplacian) of the gradient noise.
        prune_ratio: the compression ratio of gradient pruning, in [0, 1).
        lr / momentum / weight_decay: the server's SGD (appendix A: 0.1, 0.9, 5e-4).
        milestones: fractions of training at which the learning rate is multiplied by ``lr_decay_factor``.
        lr_decay_factor: that factor (appendix A's division by 10: 0.1; ``gamma``, torch's name, is its
            deprecated name).
    """

    threat_models = (ThreatModel.GRADIENT_SHARING, ThreatModel.BLACK_BOX_OUTPUTS)
    DEFENSES = ("none", "gaussian", "laplacian", "pruning")  # ATS's baselines: gradient noise, gradient pruning

    def __init__(
        self,
        network: str = "convnet",
        width: Optional[int] = None,
        participants: int = 10,
        policy: Optional[str] = None,
        crop_flip: bool = True,
        transform_variant: str = "reference",
        defense: str = "none",
        noise_scale: float = 1e-3,
        prune_ratio: float = 0.7,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        milestones: tuple[float, ...] = (3 / 8, 5 / 8, 7 / 8),
        lr_decay_factor: float = 0.1,
        data_spec: Optional[DataSpec] = None,
        gamma: Optional[float] = None,
    ) -> None:
        lr_decay_factor = renamed_argument(Collaborative, "gamma", gamma, lr_decay_factor, default=0.1)
        network = resolve_network(network, Role.COLLABORATIVE, "Collaborative")
        if participants < 1:
            raise BenchError(f"participants must be at least 1, got {participants}")
        if defense not in self.DEFENSES:
            raise BenchError(f"unknown defense '{defense}'; choose one of {list(self.DEFENSES)}")
        if noise_scale < 0:
            raise BenchError(f"noise_scale must be non-negative, got {noise_scale}")
        if not 0.0 <= prune_ratio < 1.0:
            raise BenchError(
                f"prune_ratio is the fraction of each layer's gradient set to zero, in [0, 1); got {prune_ratio}"
            )
        if not 0.0 <= momentum < 1.0:
            raise BenchError(f"momentum must lie in [0, 1), got {momentum}")
        if any(not 0.0 < m < 1.0 for m in milestones) or not 0.0 < lr_decay_factor <= 1.0:
            raise BenchError(
                f"milestones are fractions of training in (0, 1) and lr_decay_factor lies in (0, 1]; "
                f"got {milestones}, {lr_decay_factor}"
            )
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        keep_current_names(self.hparams, Collaborative, lr_decay_factor=lr_decay_factor, network=network)
        self.automatic_optimization = False
        self.network = build_network(network, Role.COLLABORATIVE, self.spec, width=width)
        self.policy = load_policy(policy, crop_flip, transform_variant)
        # the resolved policy string: a checkpoint stays loadable without the policy file
        self.hparams["policy"] = None if self.policy is None else str(self.policy)
        self.hparams["milestones"] = [float(m) for m in milestones]

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    @property
    def label(self) -> str:
        parts = []
        if self.policy is not None:
            parts.append(f"policy {self.policy}")
            if not self.policy.crop_flip:
                parts.append("no crop/flip")
            if self.policy.variant != "reference":
                parts.append(f"{self.policy.variant} operations")
        if self.hparams.defense in ("gaussian", "laplacian"):
            parts.append(f"{self.hparams.defense} {self.hparams.noise_scale:g}")
        elif self.hparams.defense == "pruning":
            parts.append(f"pruning {self.hparams.prune_ratio:.0%}")
        return f"Collaborative ({', '.join(parts) or 'no defense'})"

    # ------------------------------------------------------------------ the contract
    def shared_gradients(
        self, images: Tensor, labels: Tensor, generator: Optional[torch.Generator] = None
    ) -> SharedGradients:
        """What each of P participants shares for its mini-batch: images (P, B, C, H, W), labels (P, B).

        Transformation policy, gradient (vectorized over participants), then defense. In training
        mode batch-norm uses each participant's batch statistics and the running statistics are
        updated with their mean; in eval mode (the harness) participants do not touch the module.
        """
        if images.ndim != 5 or labels.shape != images.shape[:2]:
            raise BenchError(
                f"shared_gradients takes images (P, B, C, H, W) and labels (P, B), got "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        participants, batch = images.shape[:2]
        if self.policy is not None:
            images = self.policy(images.flatten(0, 1), generator).view_as(images)
        params = {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}
        buffers = dict(self.named_buffers())

        def loss(params, buffers, x, y):
            return F.cross_entropy(functional_call(self, (params, buffers), (x,)), y)

        if self.training:
            # each participant updates its own copy of the running statistics (in-place updates need batched buffers)
            own = {name: b.unsqueeze(0).expand(participants, *b.shape).clone() for name, b in buffers.items()}
            gradients, losses = vmap(grad_and_value(loss), in_dims=(None, 0, 0, 0))(params, own, images, labels)
            with torch.no_grad():
                for name, b in buffers.items():
                    b.copy_(own[name].mean(0) if b.is_floating_point() else own[name][0])
        else:
            gradients, losses = vmap(grad_and_value(loss), in_dims=(None, None, 0, 0))(params, buffers, images, labels)
        gradients = self.defend(gradients, generator)
        return SharedGradients(gradients=gradients, inputs=images, labels=labels, losses=losses)

    def defend(self, gradients: dict[str, Tensor], generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
        """The gradient defense each participant applies before sharing (Table 3's baselines)."""
        defense = self.hparams.defense
        if defense in ("gaussian", "laplacian") and self.hparams.noise_scale > 0:
            return add_noise(gradients, defense, self.hparams.noise_scale, generator)
        if defense == "pruning" and self.hparams.prune_ratio > 0:
            return prune_gradients(gradients, self.hparams.prune_ratio)
        return gradients

    # ------------------------------------------------------------------ FedSGD
    @property
    def local_participants(self) -> int:
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if self.hparams.participants % world_size:
            raise BenchError(
                f"{self.hparams.participants} participants cannot be shared evenly by {world_size} processes; "
                f"make --model.participants a multiple of the world size"
            )
        return self.hparams.participants // world_size

    #: the participants' gradients are set by hand: 16-mixed's loss scaler would divide them by its scale (about
    #: 65,536x too small), and bf16 autocast breaks the vmapped batch norm; full precision only
    FULL_PRECISIONS = ("32-true", "32", "64-true", "64")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        precision = str(self.trainer.precision)
        if stage == "fit" and precision not in self.FULL_PRECISIONS:
            raise BenchError(
                f"Collaborative trains in full precision (--trainer.precision 32-true), got '{precision}': it sets "
                "the averaged gradients by hand, past Lightning's precision plugin (16-mixed would leave them "
                "divided by the loss scale, about 65,536x too small)"
            )

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            weight_decay=self.hparams.weight_decay,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        milestones = sorted({max(1, math.floor(m * total)) for m in self.hparams.milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=self.hparams.lr_decay_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        participants = self.local_participants
        per_participant = images.shape[0] // participants
        if per_participant == 0:
            if batch_idx > 0:  # the short remainder at an epoch's end: too few images for one round, so no round
                return None
            raise BenchError(
                f"a batch of {images.shape[0]} cannot be split among {participants} participants; "
                f"raise --data.batch_size to a multiple of it"
            )
        used = participants * per_participant  # the remainder of a short last batch is left out
        images = images[:used].view(participants, per_participant, *images.shape[1:])
        labels = labels[:used].view(participants, per_participant)
        shared = self.shared_gradients(images, labels)
        loss = self.check_finite(shared.losses.mean(), "cross-entropy")
        # FedSGD: the server averages the participants' gradients (over every rank's participants under DDP)
        names = list(shared.gradients)
        average = torch.cat([shared.gradients[name].mean(0).flatten() for name in names])
        if self.trainer.world_size > 1:
            average = self.trainer.strategy.reduce(average, reduce_op="mean")
            self._average_buffers_across_ranks()
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        parameters = dict(self.named_parameters())
        offset = 0
        for name in names:
            parameter = parameters[name]
            parameter.grad = average[offset : offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()
        optimizer.step()
        scheduler.step()
        if self.logging_step:
            self.log("train/loss", loss.detach(), prog_bar=True)

    def _average_buffers_across_ranks(self) -> None:
        running = [b for b in self.buffers() if b.is_floating_point()]
        if running:
            flat = self.trainer.strategy.reduce(torch.cat([b.flatten() for b in running]), reduce_op="mean")
            offset = 0
            with torch.no_grad():
                for b in running:
                    b.copy_(flat[offset : offset + b.numel()].view_as(b))
                    offset += b.numel()
