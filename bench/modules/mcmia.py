"""MCMIA: model compression against membership inference (Wang, Wang, Wang, Zhou, Liu, Bi, Ding, Rajasekaran).

A whole-image classifier l (LeNet-5, VGG-16, ResNet-18, MobileNetV2, the 4-layer CNN) released
as a black box; the adversary sees its output scores. Four variants, selected by ``defense``:

``none``            the baseline: cross-entropy only.
``pruning``         MCMIA-Pruning: ADMM pruning of l's convolutional and linear weights to a
                    cardinality constraint (Eq. 17-19), then masked retraining (:class:`ADMMPruning`).
``minmax``          Nasr et al.'s Min-Max game (adversarial regularization): k steps of the
                    inference model h ascending the gain G (Eq. 1) on member and reference
                    mini-batches, then one step of l on min L_cross + gamma * G (Eq. 10-11).
``pruning_minmax``  MCMIA-Pruning & Min-Max (Algorithm 1): the Min-Max game with l updated under ADMM.

:class:`DPSGD` is the differential-privacy comparison (Table I): DP-SGD (Abadi et al. 2016) with
Poisson sampling, Opacus's clipped and noised step (per-sample gradients from ``torch.func``) and the
privacy spent accounted by Opacus (RDP and PRV) for that sampler.

The defender's reference set D' (non-members it may use) is the DataModule's ``val`` pool: the
``nonmember`` pool is the evaluation's and the ``attacker`` pool the adversary's.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from bench.datamodules.base import DataSpec
from bench.deprecation import keep_current_names, renamed_argument
from bench.errors import BenchError
from bench.metrics.cost import count_parameters
from bench.modules.base import PrivacyModule
from bench.networks.classifiers import InferenceModel, has_batch_norm
from bench.networks.registry import Role, build_network, resolve_network
from bench.threat_models import ThreatModel
from bench.training.admm_pruning import ADMMPruning

#: Renyi orders of the accountant: Opacus's defaults reach 63; few steps with large noise need higher ones
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [2**k for k in range(6, 13)]


class MCMIA(PrivacyModule):
    """A classifier trained with MCMIA's defenses against membership inference (or none: the baseline).

    Args:
        network: a classifier of :mod:`bench.networks.registry`: ``lenet5``, ``cnn4``, ``vgg16``, ``resnet18`` or
            ``mobilenet_v2``.
        defense: ``none``, ``pruning``, ``minmax`` or ``pruning_minmax`` (see the module docstring).
        lr / weight_decay: Adam for the classifier.
        sparsity: fraction of each convolutional/linear layer's weights pruned (LeNet-5 on MNIST:
            60K -> 3.8K weights, Table V, is 0.937), or ``{layer: fraction}`` with layer names under ``network.``.
        admm_updates / update_every / interval / rho / rho_multiplier / rho_max: the ADMM schedule
            (:class:`~bench.training.admm_pruning.ADMMPruning`); after ``admm_updates`` Z/U updates,
            hard pruning and masked retraining to the end of the fit.
        minmax_weight: the adversarial regularization factor of Eq. 10 (the paper's gamma, Nasr et al.'s lambda;
            ``gamma`` is its deprecated name).
        inference_steps: steps of the inference model h per step of the classifier (Algorithm 1's inner loop k;
            ``k`` is its deprecated name).
        attack_lr: Adam learning rate of h (the paper's 0.001).
    """

    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)
    label_hparams = ("defense",)
    DEFENSES = ("none", "pruning", "minmax", "pruning_minmax")

    def __init__(self, network: str = "lenet5", defense: str = "pruning", lr: float = 1e-3, weight_decay: float = 0.0,
                 sparsity: Union[float, dict[str, float]] = 0.9, admm_updates: int = 10, update_every: int = 1,
                 interval: str = "epoch", rho: float = 1e-3, rho_multiplier: float = 1.3, rho_max: float = 1.0,
                 minmax_weight: float = 1.0, inference_steps: int = 1, attack_lr: float = 1e-3,
                 data_spec: Optional[DataSpec] = None, gamma: Optional[float] = None, k: Optional[int] = None) -> None:
        minmax_weight = renamed_argument(MCMIA, "gamma", gamma, minmax_weight, default=1.0)
        inference_steps = renamed_argument(MCMIA, "k", k, inference_steps, default=1)
        network = resolve_network(network, Role.CLASSIFIER, "MCMIA")
        if defense not in self.DEFENSES:
            raise BenchError(f"defense must be one of {self.DEFENSES}, got '{defense}'")
        if minmax_weight < 0:
            raise BenchError(f"minmax_weight (gamma of Eq. 10, the weight of the adversary's gain) must be non-negative, got {minmax_weight}")
        if inference_steps < 1 or attack_lr <= 0:
            raise BenchError(f"inference_steps (steps of h per classifier step) must be >= 1 and attack_lr positive, "
                             f"got {inference_steps}, {attack_lr}")
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        keep_current_names(self.hparams, MCMIA, minmax_weight=minmax_weight, inference_steps=inference_steps, network=network)
        self.network = build_network(network, Role.CLASSIFIER, self.spec)
        self.minmax = defense in ("minmax", "pruning_minmax")
        self.pruning = defense in ("pruning", "pruning_minmax")
        if self.pruning:
            self._pruning = self._admm()  # checks the schedule now, not at fit time
        if self.minmax:
            self.automatic_optimization = False
            self.inference = InferenceModel(self.spec.num_classes)
        self._members: Optional[Iterator] = None
        self._reference: Optional[Iterator] = None

    def _admm(self):
        sparsity = self.hparams.sparsity
        if isinstance(sparsity, dict):
            sparsity = {name if name.startswith("network.") else f"network.{name}": value for name, value in sparsity.items()}
        return ADMMPruning(sparsity=sparsity, submodule="network", rho=self.hparams.rho,
                           rho_multiplier=self.hparams.rho_multiplier, rho_max=self.hparams.rho_max,
                           update_every=self.hparams.update_every, interval=self.hparams.interval,
                           admm_updates=self.hparams.admm_updates)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def configure_callbacks(self):
        return [self._pruning] if self.pruning else []

    @property
    def plain_training_step(self) -> bool:
        """Whether training_step is plain cross-entropy (shadow models may then train batched; see ShadowModels)."""
        return not self.minmax

    def configure_optimizers(self):
        classifier = torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if not self.minmax:
            return classifier
        return [classifier, torch.optim.Adam(self.inference.parameters(), lr=self.hparams.attack_lr)]

    def training_report(self) -> dict[str, float]:
        report = super().training_report()
        if self.minmax:  # h only trains the classifier: the deployed model, and its size, is the network alone
            report.update(count_parameters(self.network))
        return report

    # ------------------------------------------------------------------ Min-Max game (Algorithm 1)
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.minmax:
            datamodule = self.trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "pool_dataloader"):
                raise BenchError("the Min-Max game draws member and reference mini-batches from a bench PrivacyDataModule; "
                                 "train MCMIA with one (e.g. --data Digits)")
            # resumable streams: a resumed fit continues the straight run's member and reference batches
            self._members = self.batch_stream("train", datamodule.batch_size)
            self._reference = self.batch_stream("val", datamodule.batch_size)

    def gain(self, member_logits: Tensor, member_labels: Tensor, reference_logits: Tensor, reference_labels: Tensor) -> Tensor:
        """Eq. 1, G_f(h) = 1/2 E_D[log h(x, y, f(x))] + 1/2 E_D'[log(1 - h(x, y, f(x)))]."""
        h_member = self.inference(member_logits.softmax(-1), member_labels)
        h_reference = self.inference(reference_logits.softmax(-1), reference_labels)
        return 0.5 * (F.logsigmoid(h_member).mean() + F.logsigmoid(-h_reference).mean())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int):
        if not self.minmax:
            return super().training_step(batch, batch_idx)
        classifier_optimizer, inference_optimizer = self.optimizers()
        for _ in range(self.hparams.inference_steps):  # lines 2-6: h ascends the gain on S (members) and S' (reference)
            (members, member_labels), (reference, reference_labels) = next(self._members), next(self._reference)
            members, member_labels = members.to(self.device), member_labels.to(self.device)
            reference, reference_labels = reference.to(self.device), reference_labels.to(self.device)
            with torch.no_grad():
                member_logits, reference_logits = self.network(members), self.network(reference)
            gain = self.gain(member_logits, member_labels, reference_logits, reference_labels)
            self.manual_step(inference_optimizer, -gain, "gain")
        # lines 7-8: l on a different member batch S'': cross-entropy plus gamma times h's log-confidence
        # that these are members (the member term of Eq. 11; the reference term does not depend on l's batch)
        images, labels = batch
        self.inference.requires_grad_(False)
        logits = self.network(images)
        cross_entropy = F.cross_entropy(logits, labels)
        privacy = F.logsigmoid(self.inference(logits.softmax(-1), labels)).mean()
        loss = cross_entropy + self.hparams.minmax_weight * privacy  # Eq. 10
        self.manual_step(classifier_optimizer, loss, "classifier")
        self.inference.requires_grad_(True)
        if self.logging_step:
            self.log_dict({"train/loss": cross_entropy.detach(), "train/gain": gain.detach(),
                           "train/objective": loss.detach()}, prog_bar=True)
        return None


class DPSGD(PrivacyModule):
    """DP-SGD (Abadi et al. 2016): Poisson-sampled batches, per-sample gradients clipped to ``max_grad_norm``, Gaussian noise.

    The step is Opacus's (``DPOptimizer`` over a ``GradSampleModule``, the test checks it to 1e-6):
    every member joins a step's batch independently with probability q = world size x batch /
    members (Poisson sampling, the sampler the accountants assume: Opacus's ``DPDataLoader``); the
    per-sample gradients (``torch.func``: ``vmap(grad(...))``) are clipped to C, summed, noised with
    N(0, sigma^2 C^2) per parameter and divided by the *expected* batch size q x members. The
    Lightning batches only clock the steps (one DP step per training batch, as many per epoch as
    the loader has batches); the members are the DataModule's ``train`` pool. Under DDP, rank r
    samples the members r, r + world, ... at rate q (together: Poisson at rate q over all members),
    the ranks' clipped sums are all-reduced and rank 0 alone adds the noise: one DP-SGD step on the
    global batch.

    The record's cost says the epsilon spent at ``delta`` by Opacus's RDP accountant (``dp_epsilon``,
    the one the noise is calibrated with) and by its PRV accountant (``dp_epsilon_prv``, tighter),
    both for the Poisson sampler that ran (``dp_poisson_steps`` steps at ``dp_sample_rate``).

    Args:
        network: a classifier without batch-norm (``lenet5`` or ``cnn4``): per-sample gradients
            are undefined across a batch-norm layer.
        lr / momentum: SGD.
        max_grad_norm: the clipping norm C.
        noise_multiplier: sigma (noise std = sigma * C); None: calibrated at fit start so that the
            whole fit spends ``target_epsilon`` (the paper's MNIST setting: 6.28).
        target_epsilon / delta: the privacy budget (epsilon, delta).
    """

    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)
    display_name = "DP-SGD"
    label_hparams = ("target_epsilon",)
    headline_cost = ("dp_epsilon",)

    def __init__(self, network: str = "lenet5", lr: float = 0.05, momentum: float = 0.9, max_grad_norm: float = 1.0,
                 noise_multiplier: Optional[float] = None, target_epsilon: Optional[float] = 6.28, delta: float = 1e-5,
                 data_spec: Optional[DataSpec] = None) -> None:
        if max_grad_norm <= 0 or not 0 < delta < 1:
            raise BenchError(f"need max_grad_norm > 0 and 0 < delta < 1, got {max_grad_norm}, {delta}")
        if noise_multiplier is None and (target_epsilon is None or target_epsilon <= 0):
            raise BenchError("give DP-SGD a noise_multiplier or a positive target_epsilon to calibrate it from")
        if noise_multiplier is not None and noise_multiplier < 0:
            raise BenchError(f"noise_multiplier must be non-negative, got {noise_multiplier}")
        if not 0 <= momentum < 1:
            raise BenchError(f"momentum must lie in [0, 1), got {momentum}")
        network = resolve_network(network, Role.CLASSIFIER, "DPSGD")
        super().__init__(data_spec=data_spec, lr=lr)
        keep_current_names(self.hparams, DPSGD, network=network)
        self.network = build_network(network, Role.CLASSIFIER, self.spec)
        if has_batch_norm(self.network):
            raise BenchError(f"DP-SGD needs per-sample gradients, which batch-norm in '{network}' mixes across the "
                             "batch; use --model.network lenet5 or cnn4")
        self.automatic_optimization = False
        # the accountant's inputs, saved with the weights so that a restored model reports its epsilon
        self.register_buffer("dp_noise_multiplier", torch.tensor(-1.0 if noise_multiplier is None else noise_multiplier,
                                                                 dtype=torch.float64))
        self.register_buffer("dp_sample_rate", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("dp_steps", torch.tensor(0, dtype=torch.long))
        self._members: Optional[tuple[Tensor, Tensor]] = None
        self._member_count = 0
        self._expected_batch = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.network.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "pool"):
            raise BenchError("DPSGD needs a bench PrivacyDataModule: it Poisson-samples the members of its train pool")
        images, labels = datamodule.pool("train").tensors()
        members, world, rank = len(images), self.trainer.world_size, self.trainer.global_rank
        self.dp_sample_rate.fill_(min(1.0, world * datamodule.batch_size / members))
        self._expected_batch = float(self.dp_sample_rate) * members
        self._members = (images[rank::world].to(self.device), labels[rank::world].to(self.device))  # this rank's shard
        self._member_count = members
        if self.dp_noise_multiplier < 0:
            from opacus.accountants.utils import get_noise_multiplier

            steps = int(self.trainer.estimated_stepping_batches)
            try:
                sigma = get_noise_multiplier(target_epsilon=self.hparams.target_epsilon, target_delta=self.hparams.delta,
                                             sample_rate=float(self.dp_sample_rate), steps=max(steps, 1), accountant="rdp",
                                             alphas=RDP_ORDERS)
            except ValueError as error:
                raise BenchError(f"DP-SGD cannot reach epsilon {self.hparams.target_epsilon} at delta {self.hparams.delta} "
                                 f"in {steps} steps at sampling rate {float(self.dp_sample_rate):.3g} ({error}); raise "
                                 "target_epsilon or delta, or train fewer steps") from None
            self.dp_noise_multiplier.fill_(sigma)

    def per_sample_gradients(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Gradients of every sample's loss: {name: (batch, *parameter shape)}."""
        params = {name: p.detach() for name, p in self.network.named_parameters()}
        if len(images) == 0:  # a Poisson batch can be empty
            return {name: p.new_zeros((0, *p.shape)) for name, p in params.items()}
        buffers = dict(self.network.named_buffers())

        def loss(params, image, label):
            logits = functional_call(self.network, (params, buffers), (image.unsqueeze(0),))
            return F.cross_entropy(logits, label.unsqueeze(0))

        return vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)

    def poisson_batch(self) -> tuple[Tensor, Tensor]:
        """This rank's members, each kept with probability q (Poisson sampling; Opacus's UniformWithReplacementSampler).

        One uniform draw per member of the whole pool, of which this rank reads its shard's: every member's
        inclusion is independent of every other's, on one rank or many (ranks share the seed).
        """
        images, labels = self._members
        world, rank = self.trainer.world_size, self.trainer.global_rank
        draws = torch.rand(self._member_count, device=images.device)[rank::world]
        keep = draws < float(self.dp_sample_rate)
        return images[keep], labels[keep]

    def clipped_sum(self, images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """sum_i clip_C(g_i) per parameter, and the clip factors (Opacus's: C / (||g_i|| + 1e-6), at most 1)."""
        gradients = self.per_sample_gradients(images, labels)
        norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gradients.values()))
        clip = (self.hparams.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        return {name: torch.einsum("n,n...->...", clip, g) for name, g in gradients.items()}, clip

    def add_noise(self, summed: dict[str, Tensor]) -> dict[str, Tensor]:
        """sum + N(0, sigma^2 C^2), drawn per parameter in order from the global RNG, as Opacus's DPOptimizer does."""
        std = float(self.dp_noise_multiplier) * self.hparams.max_grad_norm
        return {name: g + torch.normal(mean=0.0, std=std, size=g.shape, device=g.device) for name, g in summed.items()}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        optimizer = self.optimizers()
        images, labels = self.poisson_batch()  # the Lightning batch only clocks the step
        summed, clip = self.clipped_sum(images, labels)
        if self.trainer.global_rank == 0:  # one draw of the noise for the global batch, whatever the world size
            summed = self.add_noise(summed)
        if self.trainer.world_size > 1:  # the gradients are set by hand: DDP's backward hooks never average them
            summed = {name: self.trainer.strategy.reduce(g, reduce_op="sum") for name, g in summed.items()}
        gradient = {name: g / self._expected_batch for name, g in summed.items()}  # Opacus: / expected batch size
        optimizer.zero_grad(set_to_none=True)
        for name, parameter in self.network.named_parameters():
            parameter.grad = gradient[name].view_as(parameter)
        optimizer.step()
        self.dp_steps += 1
        if self.logging_step and len(images):
            with torch.no_grad():
                loss = F.cross_entropy(self.network(images), labels)
            self.log_dict({"train/loss": self.check_finite(loss), "train/clipped_fraction": (clip < 1).float().mean(),
                           "train/poisson_batch": float(len(images))}, prog_bar=True)

    def epsilon(self, accountant: str = "rdp") -> float:
        """The epsilon spent so far at ``delta`` by Opacus's ``rdp`` or ``prv`` accountant; 0 before training, inf without noise."""
        steps, sigma = int(self.dp_steps), float(self.dp_noise_multiplier)
        if steps == 0:
            return 0.0
        if sigma <= 0:
            return math.inf
        from opacus.accountants import PRVAccountant, RDPAccountant

        history = [(sigma, float(self.dp_sample_rate), steps)]
        if accountant == "prv":
            prv = PRVAccountant()
            prv.history = history
            return float(prv.get_epsilon(self.hparams.delta))
        rdp = RDPAccountant()
        rdp.history = history
        return float(rdp.get_epsilon(self.hparams.delta, alphas=RDP_ORDERS))

    def training_report(self) -> dict[str, Any]:
        report = {**super().training_report(), "dp_delta": self.hparams.delta,
                  "dp_noise_multiplier": float(self.dp_noise_multiplier), "dp_steps": int(self.dp_steps),
                  # the cost holds numbers only: the sampler and the accountants are in the names
                  "dp_sample_rate": float(self.dp_sample_rate), "dp_poisson_steps": int(self.dp_steps)}
        for name, key in (("rdp", "dp_epsilon"), ("prv", "dp_epsilon_prv")):
            try:
                epsilon = self.epsilon(name)
            except (ValueError, RuntimeError):  # the PRV accountant's domain excludes some (sigma, q, steps)
                epsilon = math.nan
            report[key] = epsilon if math.isfinite(epsilon) else None
        return report
