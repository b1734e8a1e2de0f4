"""RAN: Reconstructive Adversarial Network (Liu, Shrivastava, Du, Zhong).

Three networks: the Encoder E on the client (convolution, batch-norm and max-pooling layers), the
Classifier C on the server (an MLP on E's features), and the Decoder D, E mirrored layer by layer,
standing in for the attacker during training. Algorithm 1, for every mini-batch:

    k times:   update E, C with lr l1 to minimise O_d              (Eq. 2, discriminative stage)
               update D    with lr l2 to minimise O_g              (Eq. 3, generative stage)
    once:      update E, C with lr l3 to minimise O_a = lambda O_d - (1 - lambda) O_g   (Eq. 4)

Adam for all three stages. What leaves the client is E(x); the server predicts C(E(x)).

Both objectives are sums over the mini-batch in the paper; here both are averaged over it, which
keeps their ratio (and so the meaning of lambda) and makes learning rates batch-size independent.
O_g uses the per-sample squared Euclidean distance |I - D(E(I))|^2 (summed over pixels), as Eq. 3.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.deprecation import keep_current_names, renamed_argument
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.modules.split_network import EncoderRelease
from bench.networks.decoders import mirror_decoder
from bench.networks.registry import Role, build_network, resolve_network
from bench.spec import TASKS, DataSpec
from bench.threat_models import Capability, ThreatModel


def reconstruction_error(reconstructed: Tensor, images: Tensor) -> Tensor:
    """Eq. 3's |I - I'|^2 per sample (squared Euclidean distance), averaged over the batch."""
    return (reconstructed - images).square().flatten(1).sum(1).mean()


class RAN(EncoderRelease, PrivacyModule):
    """Encoder/Classifier/Decoder trained by RAN's three-stage adversarial algorithm (Algorithm 1).

    Args:
        network: a split network (:mod:`bench.networks.registry`): ``lenet5`` (MNIST-sized inputs), ``vgg9`` or
            ``vgg16`` (CIFAR-sized); the decoder mirrors its encoder.
        lam: lambda of Eq. 4 in [0, 1]: 1 is plain classification, lower values trade accuracy for privacy.
        stage_pairs: discriminative/generative stage pairs before each adversarial step (the paper's k = 3;
            ``k`` is its deprecated name).
        l1 / l2 / l3: Adam learning rates of the discriminative, generative and adversarial stages.
    """

    threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)
    tasks = TASKS  # O_d's classification loss is the data spec's (cross-entropy, or BCE per attribute)
    capabilities = (Capability.OWN_RECONSTRUCTION,)
    label_hparams = ("lam",)

    def __init__(
        self,
        network: str = "lenet5",
        lam: float = 0.5,
        stage_pairs: int = 3,
        l1: float = 1e-3,
        l2: float = 1e-3,
        l3: float = 1e-3,
        data_spec: Optional[DataSpec] = None,
        k: Optional[int] = None,
    ) -> None:
        stage_pairs = renamed_argument(RAN, "k", k, stage_pairs, default=3)
        network = resolve_network(network, Role.SPLIT, "RAN")
        if not 0.0 <= lam <= 1.0:
            raise BenchError(f"lam (lambda of Eq. 4) must lie in [0, 1], got {lam}")
        if stage_pairs < 1:
            raise BenchError(
                f"stage_pairs (the paper's k: stage pairs per adversarial step) must be at least 1, got {stage_pairs}"
            )
        if min(l1, l2, l3) <= 0:
            raise BenchError(f"learning rates l1, l2, l3 must be positive, got {l1}, {l2}, {l3}")
        super().__init__(data_spec=data_spec, lr=l1)
        keep_current_names(self.hparams, RAN, stage_pairs=stage_pairs, network=network)
        self.automatic_optimization = False
        self.encoder, self.classifier = build_network(network, Role.SPLIT, self.spec)
        self.decoder = mirror_decoder(self.encoder, self.spec.image_shape)

    # ------------------------------------------------------------------ the contract (release: EncoderRelease)
    def own_reconstruction(self, released: Tensor) -> Tensor:
        """RAN's own Decoder D applied to released features (the paper's "RAN's Decoder" error)."""
        return self.decoder(released)

    # ------------------------------------------------------------------ Algorithm 1
    def configure_optimizers(self):
        encoder_classifier = [*self.encoder.parameters(), *self.classifier.parameters()]
        return [
            torch.optim.Adam(encoder_classifier, lr=self.hparams.l1),  # discriminative stage, Eq. 2
            torch.optim.Adam(self.decoder.parameters(), lr=self.hparams.l2),  # generative stage, Eq. 3
            torch.optim.Adam(encoder_classifier, lr=self.hparams.l3),  # adversarial stage, Eq. 4
        ]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        discriminative, generative, adversarial = self.optimizers()
        for _ in range(self.hparams.stage_pairs):
            # Eq. 2, O_d: E and C learn to classify
            o_d = self.task_loss(self.classifier(self.encoder(images)), labels)
            self.manual_step(discriminative, o_d, "O_d", log="train/O_d")
            # Eq. 3, O_g: D learns to invert E, whose features it only reads
            with torch.no_grad():
                features = self.encoder(images)
            o_g = reconstruction_error(self.decoder(features), images)
            self.manual_step(generative, o_g, "O_g", log="train/O_g")
        self.decoder.requires_grad_(False)  # D is the fixed adversary of this stage
        o_a = self.adversarial_objective(images, labels)
        self.manual_step(adversarial, o_a, "O_a", log="train/O_a")
        self.decoder.requires_grad_(True)

    def adversarial_objective(self, images: Tensor, labels: Tensor) -> Tensor:
        """Eq. 4, O_a = lambda O_d - (1 - lambda) O_g: E and C trade classification against D's error."""
        features = self.encoder(images)
        lam = self.hparams.lam
        o_a = lam * self.task_loss(self.classifier(features), labels)
        if lam < 1:  # at lambda = 1 the stage is plain classification: D is not even evaluated
            o_a = o_a - (1 - lam) * reconstruction_error(self.decoder(features), images)
        return o_a

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        images, _ = batch
        self.log("val/own_decoder_mse", F.mse_loss(self.decoder(self.encoder(images)), images), sync_dist=True)
