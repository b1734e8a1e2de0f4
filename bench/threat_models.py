"""The contract in one place: threat models, capabilities, and attack roles.

A method lists the threat models that apply to it in ``threat_models`` and the optional parts it
offers to attacks in ``capabilities``; every attack names the one threat model it belongs to, the
capabilities it needs (``requires``) and its ``role``. The harness runs an attack on a method
exactly when the threat model matches and every required capability is declared, so it never
needs to know which method it is evaluating. Both declarations are checked when a class is
defined: a method that declares a threat model or capability without its methods, or defines a
capability's method without declaring it, does not import.
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


class Capability(str, Enum):
    """An optional part a method offers to the attacks of one of its threat models."""

    #: ``own_reconstruction(released) -> images``: a decoder the method trains against itself (RAN's D,
    #: DCMG's generator); attacks that use it are diagnostics, the adversary does not have it
    OWN_RECONSTRUCTION = "own_reconstruction"
    #: ``measurement_matrix() -> A (m, n)``: the release is y = A x with an A the server knows
    MEASUREMENT_MATRIX = "measurement_matrix"
    #: ``released_training_images(images) -> images``: what the server receives of training images
    RELEASED_TRAINING_IMAGES = "released_training_images"
    #: ``real_features(images) -> a`` and ``release_with_phase(images) -> (release, theta)``: the
    #: attacker may query the encryption module with its own images and sees the phase it used
    PHASE_QUERIES = "phase_queries"

    @property
    def required_methods(self) -> tuple[str, ...]:
        return _CAPABILITY_METHODS[self]

    @property
    def threat_model(self) -> ThreatModel:
        """The threat model whose attacks use this capability (a method must declare it too)."""
        return _CAPABILITY_THREAT_MODELS[self]


_CAPABILITY_METHODS: dict[Capability, tuple[str, ...]] = {
    Capability.OWN_RECONSTRUCTION: ("own_reconstruction",),
    Capability.MEASUREMENT_MATRIX: ("measurement_matrix",),
    Capability.RELEASED_TRAINING_IMAGES: ("released_training_images",),
    Capability.PHASE_QUERIES: ("real_features", "release_with_phase"),
}

_CAPABILITY_THREAT_MODELS: dict[Capability, ThreatModel] = {
    capability: ThreatModel.FEATURE_RELEASE for capability in Capability
}


class Role(str, Enum):
    """What an attack's result means for the verdict."""

    #: uses only what the adversary of its threat model has: its results are the privacy verdict
    ADVERSARY = "adversary"
    #: uses the method's own training-time parts (e.g. RAN's D): reported apart, never ranked as privacy
    DIAGNOSTIC = "diagnostic"


def check_declarations(cls: type) -> None:
    """Raise TypeError when ``cls`` (a method class) declares what it does not implement, or the reverse."""
    for threat_model in cls.threat_models:
        missing = [name for name in threat_model.required_methods if getattr(cls, name, None) is None]
        if missing:
            raise TypeError(
                f"{cls.__name__} declares threat model '{threat_model.value}' but does not implement {missing}"
            )
    for capability in cls.capabilities:
        if not isinstance(capability, Capability):
            raise TypeError(f"{cls.__name__}.capabilities must hold Capability members, got {capability!r}")
        if capability.threat_model not in cls.threat_models:
            raise TypeError(
                f"{cls.__name__} declares capability '{capability.value}' of threat model "
                f"'{capability.threat_model.value}' without declaring that threat model"
            )
        missing = [name for name in capability.required_methods if not callable(getattr(cls, name, None))]
        if missing:
            raise TypeError(f"{cls.__name__} declares capability '{capability.value}' but does not implement {missing}")
    for capability in Capability:
        if capability not in cls.capabilities and any(
            callable(getattr(cls, name, None)) for name in capability.required_methods
        ):
            raise TypeError(
                f"{cls.__name__} defines {list(capability.required_methods)} but does not declare "
                f"capability '{capability.value}': add Capability.{capability.name} to its capabilities"
            )


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
