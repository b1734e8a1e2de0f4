"""The client part of a split model trained elsewhere, as a feature-release :class:`~bench.modules.base.PrivacyModule`.

The user types a factory (``PKG.MODULE:FUNCTION``) that builds the client's ``torch.nn.Module``: it takes images in
[0, 1] of shape (N, C, H, W) and returns what the client releases, one tensor row per image. Its weights, if any,
come from a file read with ``torch.load(weights_only=True)`` and loaded strictly. The adapter declares the
feature-release threat model (``release``, ``predict_from_release``, ``client_network``), so the harness runs the
same feature-release attacks on it as on :class:`~bench.modules.split_network.SplitNetwork`: the attacker queries
the client as a black box on its own pool and trains decoders on (release, image) pairs.

There is no server part: the audit records no utility (the harness's utility pass sees constant logits, and
``bench audit`` leaves its numbers out of the record). Nothing read from a file chooses code.
"""

from __future__ import annotations

from typing import Any, Callable

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
    """

    threat_models = (ThreatModel.FEATURE_RELEASE,)
    display_name = "external"

    def __init__(self, data_spec: Any, factory: Callable[[], nn.Module], factory_name: str) -> None:
        super().__init__(data_spec=data_spec)
        self.hparams.pop("factory", None)  # code, not a hyper-parameter: never written to a record or file
        self.client = build_network(factory, factory_name, "--release")

    @property
    def label(self) -> str:
        return str(self.hparams["factory_name"])  # the leaderboard marks it external

    @property
    def network_name(self) -> str:
        return str(self.hparams["factory_name"])

    def release(self, x: Tensor) -> Tensor:
        return self.client(x)

    def predict_from_release(self, released: Tensor) -> Tensor:
        # no server head was given: constant logits, so that the harness's utility pass runs; the audit's record
        # carries no utility at all (an accuracy of these logits would be the majority class's share, not a result)
        return torch.zeros(len(released), self.spec.num_classes, device=released.device)

    def client_network(self) -> nn.Module:
        return self.client


def check_release(module: ExternalRelease, images: Tensor) -> None:
    """The client releases one finite tensor row per image of a few attacker samples: checked before any decoder
    trains, so that a client that cannot take the data's images, or releases something else, is one line."""
    name = module.hparams["factory_name"]
    try:
        with torch.no_grad():
            released = module.release(images)
    except Exception as error:  # the user's code: whatever it raises is one line
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise BenchError(
            f"--release {name}: the client network cannot take {tuple(images.shape)} images in [0, 1] "
            f"({type(error).__name__}: {first})"
        ) from None
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
