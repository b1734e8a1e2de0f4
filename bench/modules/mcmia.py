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

:class:`~bench.modules.dpsgd.DPSGD` (re-exported here) is the differential-privacy comparison (Table I): DP-SGD
through Opacus's own GradSampleModule hooks, DPOptimizer, DPDataLoader and accountant (see :mod:`bench.modules.dpsgd`).

The defender's reference set D' (non-members it may use) is the DataModule's ``val`` pool: the
``nonmember`` pool is the evaluation's and the ``attacker`` pool the adversary's.
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.datamodules.base import DataSpec
from bench.deprecation import keep_current_names, renamed_argument
from bench.errors import BenchError
from bench.metrics.cost import count_parameters
from bench.modules.base import PrivacyModule
from bench.modules.dpsgd import DPSGD, RDP_ORDERS  # noqa: F401 - DP-SGD lived here: old imports keep working
from bench.networks.classifiers import InferenceModel
from bench.networks.registry import Role, build_network, resolve_network
from bench.threat_models import ThreatModel
from bench.training.admm_pruning import ADMMPruning


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

    def __init__(
        self,
        network: str = "lenet5",
        defense: str = "pruning",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        sparsity: Union[float, dict[str, float]] = 0.9,
        admm_updates: int = 10,
        update_every: int = 1,
        interval: str = "epoch",
        rho: float = 1e-3,
        rho_multiplier: float = 1.3,
        rho_max: float = 1.0,
        minmax_weight: float = 1.0,
        inference_steps: int = 1,
        attack_lr: float = 1e-3,
        data_spec: Optional[DataSpec] = None,
        gamma: Optional[float] = None,
        k: Optional[int] = None,
    ) -> None:
        minmax_weight = renamed_argument(MCMIA, "gamma", gamma, minmax_weight, default=1.0)
        inference_steps = renamed_argument(MCMIA, "k", k, inference_steps, default=1)
        network = resolve_network(network, Role.CLASSIFIER, "MCMIA")
        if defense not in self.DEFENSES:
            raise BenchError(f"defense must be one of {self.DEFENSES}, got '{defense}'")
        if minmax_weight < 0:
            raise BenchError(
                "minmax_weight (gamma of Eq. 10, the weight of the adversary's gain) must be non-negative, "
                f"got {minmax_weight}"
            )
        if inference_steps < 1 or attack_lr <= 0:
            raise BenchError(
                f"inference_steps (steps of h per classifier step) must be >= 1 and attack_lr positive, "
                f"got {inference_steps}, {attack_lr}"
            )
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        keep_current_names(
            self.hparams, MCMIA, minmax_weight=minmax_weight, inference_steps=inference_steps, network=network
        )
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
            sparsity = {
                name if name.startswith("network.") else f"network.{name}": value for name, value in sparsity.items()
            }
        return ADMMPruning(
            sparsity=sparsity,
            submodule="network",
            rho=self.hparams.rho,
            rho_multiplier=self.hparams.rho_multiplier,
            rho_max=self.hparams.rho_max,
            update_every=self.hparams.update_every,
            interval=self.hparams.interval,
            admm_updates=self.hparams.admm_updates,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def configure_callbacks(self):
        return [self._pruning] if self.pruning else []

    @property
    def plain_training_step(self) -> bool:
        """Whether training_step is plain cross-entropy (shadow models may then train batched; see ShadowModels)."""
        return not self.minmax

    def configure_optimizers(self):
        classifier = torch.optim.Adam(
            self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
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
                raise BenchError(
                    "the Min-Max game draws member and reference mini-batches from a bench PrivacyDataModule; "
                    "train MCMIA with one (e.g. --data Digits)"
                )
            # resumable streams: a resumed fit continues the straight run's member and reference batches
            self._members = self.batch_stream("train", datamodule.batch_size)
            self._reference = self.batch_stream("val", datamodule.batch_size)

    def gain(
        self, member_logits: Tensor, member_labels: Tensor, reference_logits: Tensor, reference_labels: Tensor
    ) -> Tensor:
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
            self.log_dict(
                {"train/loss": cross_entropy.detach(), "train/gain": gain.detach(), "train/objective": loss.detach()},
                prog_bar=True,
            )
        return None
