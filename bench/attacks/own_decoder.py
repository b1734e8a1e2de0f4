"""The method's own decoder: how well the adversary a method trained against reconstructs its releases.

RAN trains a Decoder D against its own Encoder and reports D's reconstruction error beside that of a
separately trained decoder (section 3.1, the green dashed line of Figure 3). Any method that trains
such a decoder exposes it as ``own_reconstruction(released)``; this attack scores it on the test
pool with the same metrics as :class:`~bench.attacks.FeatureInversion`. It trains nothing.
"""

from __future__ import annotations

import torch

from bench.attacks.base import Attack, AttackResult
from bench.attacks.feature_inversion import query_client
from bench.metrics.reconstruction import EXPOSURE_DIRECTIONS, score_reconstructions
from bench.threat_models import Capability, Role, ThreatModel


class OwnDecoder(Attack):
    """Score the decoder a method trained against itself (e.g. RAN's D) on the test pool.

    Args:
        batch_size: queries per batch.
        max_test_samples: cap the test pool (None: all of it).
    """

    name = "own_decoder"
    threat_model = ThreatModel.FEATURE_RELEASE
    metric_directions = {"mse": "higher", "mae": "higher", "psnr": "lower", "ssim": "lower", **EXPOSURE_DIRECTIONS}
    primary_metric = "mse"
    role = Role.DIAGNOSTIC  # the method's own decoder: the adversary of feature release does not have it
    requires = (Capability.OWN_RECONSTRUCTION,)

    def __init__(self, batch_size: int = 256, max_test_samples: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_test_samples = max_test_samples

    @torch.no_grad()
    def run(self, module, datamodule, generator: torch.Generator) -> AttackResult:
        images, _ = datamodule.pool("test").tensors()
        images = images[: self.max_test_samples].to(module.device)
        released = query_client(module.release, images, self.batch_size, module.device)
        reconstructed = torch.cat(
            [
                module.own_reconstruction(released[i : i + self.batch_size])
                for i in range(0, len(released), self.batch_size)
            ]
        )
        metrics, details, examples = score_reconstructions(reconstructed, images, datamodule)
        return AttackResult(metrics, examples=examples, details={"test_samples": len(images), **details})
