"""DNN: the plain split network, the baseline every feature-release defense is compared with.

The client runs the convolutional encoder and releases its features E(x); the server classifies
them with an MLP C. No privacy mechanism at all: "DNN" in the RAN paper (section 3.1), "the
original network" in the complex-valued paper (section 4.3).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from bench.deprecation import keep_current_names
from bench.modules.base import PrivacyModule
from bench.networks.registry import Role, build_network, resolve_network
from bench.spec import TASKS, DataSpec
from bench.threat_models import ThreatModel


class EncoderRelease:
    """Feature release by an ``encoder`` on the client and a ``classifier`` on the server.

    A mixin for methods whose client part is ``self.encoder`` and whose server part is
    ``self.classifier`` (the DNN, RAN): the feature-release contract in three lines.
    """

    encoder: nn.Module
    classifier: nn.Module

    def release(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def predict_from_release(self, released: Tensor) -> Tensor:
        return self.classifier(released)

    def client_network(self) -> nn.Module:
        return self.encoder


class SplitNetwork(EncoderRelease, PrivacyModule):
    """Encoder on the client, classifier on the server, trained jointly with cross-entropy (BCE for attributes).

    Args:
        network: a split network of :mod:`bench.networks.registry`: ``lenet5`` (MNIST-sized inputs), ``vgg9``
            or ``vgg16`` (CIFAR-sized).
    """

    threat_models = (ThreatModel.FEATURE_RELEASE, ThreatModel.BLACK_BOX_OUTPUTS)
    display_name = "DNN"
    tasks = TASKS  # the default training step's loss follows the data spec (classes or attributes)

    def __init__(
        self, network: str = "lenet5", lr: float = 1e-3, weight_decay: float = 0.0, data_spec: Optional[DataSpec] = None
    ) -> None:
        network = resolve_network(network, Role.SPLIT, "SplitNetwork")
        super().__init__(data_spec=data_spec, lr=lr, weight_decay=weight_decay)
        keep_current_names(self.hparams, SplitNetwork, network=network)
        self.encoder, self.classifier = build_network(network, Role.SPLIT, self.spec)
