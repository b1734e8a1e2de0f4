"""Threat models: what an adversary sees, and what a method must expose for it to be attacked.

A method lists the threat models that apply to it in ``threat_models``; every attack names the
one threat model it belongs to. The harness runs an attack on a method exactly when the two
meet, so it never needs to know which method it is evaluating.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


class ThreatModel(str, Enum):
    """The adversary's view of a deployed method."""

    #: The client runs the first part of the model and releases its output (features,
    #: compressed measurements, encrypted features) to an untrusted server. The adversary
    #: sees the released tensor and can query the client part as a black box.
    FEATURE_RELEASE = "feature_release"
    #: The adversary queries the trained model and sees its output scores (membership inference).
    BLACK_BOX_OUTPUTS = "black_box_outputs"
    #: Participants share gradients of their own mini-batches with an honest-but-curious server,
    #: which knows the model (architecture, parameters, cross-entropy loss) and sees each gradient.
    #: ``shared_gradients(images, labels, generator=None) -> SharedGradients`` computes what P
    #: participants share for their mini-batches ``images`` (P, B, C, H, W) in [0, 1] and
    #: ``labels`` (P, B): after the method's own input transformation and gradient defense, the
    #: gradient of the mean cross-entropy of ``forward`` with respect to ``named_parameters()``.
    GRADIENT_SHARING = "gradient_sharing"

    @property
    def required_methods(self) -> tuple[str, ...]:
        """The methods a module must implement to declare this threat model."""
        return _REQUIRED_METHODS[self]

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_REQUIRED_METHODS: dict[ThreatModel, tuple[str, ...]] = {
    ThreatModel.FEATURE_RELEASE: ("release", "predict_from_release", "client_network"),
    ThreatModel.BLACK_BOX_OUTPUTS: (),  # forward(x) -> logits is enough
    ThreatModel.GRADIENT_SHARING: ("shared_gradients",),
}

_DESCRIPTIONS: dict[ThreatModel, str] = {
    ThreatModel.FEATURE_RELEASE: "the client releases release(x); the attacker queries the client as a black box",
    ThreatModel.BLACK_BOX_OUTPUTS: "the attacker queries the trained model and sees its output scores",
    ThreatModel.GRADIENT_SHARING: "participants share gradients with an honest-but-curious server",
}


@dataclass
class SharedGradients:
    """What P participants share under ``GRADIENT_SHARING`` (see ``ThreatModel.GRADIENT_SHARING``).

    ``gradients`` maps each of the module's parameter names to a (P, *shape) tensor; ``inputs``
    (P, B, C, H, W) are the images the gradients were computed on (after transformation: what a
    reconstruction is scored against); ``labels`` (P, B); ``losses`` (P,) each participant's loss.
    """

    gradients: "dict[str, Tensor]"
    inputs: "Tensor"
    labels: "Tensor"
    losses: "Tensor"
