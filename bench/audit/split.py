"""The client part of a split model trained elsewhere, as a feature-release :class:`~bench.modules.base.PrivacyModule`.

The user types a factory (``PKG.MODULE:FUNCTION``) that builds the client's ``torch.nn.Module``: it takes images in
[0, 1] of shape (N, C, H, W) and returns what the client releases, one tensor row per image. Its weights, if any,
come from a file read with ``torch.load(weights_only=True)`` and loaded strictly. The adapter declares the
feature-release threat model (``release``, ``predict_from_release``, ``client_network``), so the harness runs the
same feature-release attacks on it as on :class:`~bench.modules.split_network.SplitNetwork`: the attacker queries
the client as a black box on its own pool and trains decoders on (release, image) pairs.

The server part is optional (``--head PKG.MODULE:FUNCTION``, its own ``--head_weights``): with it the record has the
test-pool accuracy of head(release(x)); without it the audit records no utility (the harness's utility pass sees
constant logits, and ``bench audit`` leaves its numbers out of the record). Nothing read from a file chooses code.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from bench.audit.external import build_network
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.threat_models import ThreatModel


class ExternalRelease(PrivacyModule):
    """A user's client network, attacked through what it releases (threat model ``feature_release``).

    Not registered: it is built by ``bench audit --release`` from what the command line named, never from a file.

    Args:
        data_spec: the data's spec (classes, image shape).
        factory: builds the client network (no arguments).
        factory_name: what the user typed for it (for the record).
        head_factory: builds the server part (no arguments), which classifies the release; None: no utility.
        head_name: what the user typed for it.
    """

    threat_models = (ThreatModel.FEATURE_RELEASE,)
    display_name = "external"

    def __init__(
        self,
        data_spec: Any,
        factory: Callable[[], nn.Module],
        factory_name: str,
        head_factory: Optional[Callable[[], nn.Module]] = None,
        head_name: Optional[str] = None,
    ) -> None:
        super().__init__(data_spec=data_spec)
        for key in ("factory", "head_factory"):  # code, not hyper-parameters: never written to a record or file
            self.hparams.pop(key, None)
        self.client = build_network(factory, factory_name, "--release")
        self.head = None if head_factory is None else build_network(head_factory, str(head_name), "--head")

    @property
    def label(self) -> str:
        return str(self.hparams["factory_name"])  # the leaderboard marks it external

    @property
    def network_name(self) -> str:
        return str(self.hparams["factory_name"])

    def release(self, x: Tensor) -> Tensor:
        return self.client(x)

    def predict_from_release(self, released: Tensor) -> Tensor:
        if self.head is not None:
            return self.head(released)
        # no server part was given: constant logits, so that the harness's utility pass runs; the audit's record
        # carries no utility at all (an accuracy of these logits would be the majority class's share, not a result)
        return torch.zeros(len(released), self.spec.num_classes, device=released.device)

    def client_network(self) -> nn.Module:
        return self.client


def _user_call(function, inputs: Tensor, problem: str):
    """``function(inputs)`` without gradients; whatever the user's code raises becomes one line: ``problem`` (error)."""
    try:
        with torch.no_grad():
            return function(inputs)
    except Exception as error:  # the user's code: whatever it raises is one line
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise BenchError(f"{problem} ({type(error).__name__}: {first})") from None


def check_release(module: ExternalRelease, images: Tensor) -> None:
    """The client releases one finite tensor row per image of a few attacker samples, and the head (if any) answers
    one logit per class for each: checked before any decoder trains, so that a client that cannot take the data's
    images, releases something else, or a head that does not classify the release, is one line."""
    name = module.hparams["factory_name"]
    released = _user_call(
        module.release,
        images,
        f"--release {name}: the client network cannot take {tuple(images.shape)} images in [0, 1]",
    )
    if not isinstance(released, Tensor):
        raise BenchError(
            f"--release {name}: the client network returns a {type(released).__name__}; the release must be one "
            "tensor, one row per image"
        )
    if released.ndim < 2 or released.shape[0] != len(images):
        raise BenchError(
            f"--release {name}: the client network releases shape {tuple(released.shape)} for {len(images)} images; "
            f"the release must have one row per image ({len(images)}, ...)"
        )
    if not torch.isfinite(released).all():
        raise BenchError(f"--release {name}: the release of {len(images)} attacker images holds NaN or infinity")
    if module.head is not None:
        _check_head(module, released)


def _check_head(module: ExternalRelease, released: Tensor) -> None:
    name = module.hparams["head_name"]
    logits = _user_call(
        module.head,
        released,
        f"--head {name}: the server part cannot take the release of shape {tuple(released.shape)}",
    )
    expected = (len(released), module.spec.num_classes)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise BenchError(
            f"--head {name}: the server part answers {shape} for {len(released)} releases; expected {expected}"
        )
