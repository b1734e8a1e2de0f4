"""Feature inversion: reconstruct the client's input from what it released.

Threat model: feature release. The attacker holds the client part as a black box (it can query
``release`` on inputs of its own, the attacker pool) and trains a decoder on the
(released, input) pairs; the decoder is then applied to the released tensors of the test pool
and scored against the true inputs (MSE, MAE, PSNR, SSIM; images in [0, 1]). This is the
"separately trained decoder" of RAN (section 3.1) and dec(x) of the complex-valued paper (4.2).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from bench.attacks.base import Attack, AttackResult
from bench.errors import BenchError
from bench.metrics.reconstruction import reconstruction_metrics
from bench.networks.decoders import mirror_decoder, released_as_real, upsampling_decoder
from bench.threat_models import Role, ThreatModel

#: decoder name -> builder(client_network, released_shape, image_shape); methods may register more
DECODERS: dict[str, Callable[[nn.Module, Sequence[int], Sequence[int]], nn.Module]] = {
    "mirror": lambda client, released_shape, image_shape: mirror_decoder(client, image_shape),
    "upsampling": lambda client, released_shape, image_shape: upsampling_decoder(released_shape, image_shape),
}


@torch.no_grad()
def query_client(release: Callable[[Tensor], Tensor], images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Black-box queries: the released tensors of ``images``, computed in batches."""
    outputs = [released_as_real(release(images[i : i + batch_size].to(device))) for i in range(0, len(images), batch_size)]
    return torch.cat(outputs)


def _check_decoder(decoder: nn.Module, released: Tensor, image_shape: Sequence[int]) -> None:
    """A decoder built from the client's layers must take what the client really releases."""
    try:
        with torch.no_grad():
            shape = tuple(decoder.eval()(released).shape[1:])
    except RuntimeError as error:
        raise BenchError(f"the decoder does not take released tensors of shape {tuple(released.shape[1:])} "
                         f"({str(error).splitlines()[0]})") from error
    finally:
        decoder.train()
    if shape != tuple(image_shape):
        raise BenchError(f"the decoder outputs {shape}, the images are {tuple(image_shape)}")


class FeatureInversion(Attack):
    """Train a decoder on the attacker pool's (released, image) pairs; score it on the test pool.

    Args:
        decoder: ``mirror`` (the client network reversed layer by layer; the default, and the
            strongest attacker of RAN's evaluation) or ``upsampling`` (needs only the released
            shape). ``mirror`` falls back to ``upsampling`` when the client network cannot be
            mirrored, and the record says so.
        epochs: passes over the attacker pool.
        batch_size: decoder mini-batch size.
        lr: Adam learning rate of the decoder.
        max_attacker_samples / max_test_samples: cap the pools (None: all of them).
        progress: show a progress bar while the decoder trains.
    """

    name = "feature_inversion"
    threat_model = ThreatModel.FEATURE_RELEASE
    role = Role.ADVERSARY
    metric_directions = {"mse": "higher", "mae": "higher", "psnr": "lower", "ssim": "lower"}
    primary_metric = "mse"

    def __init__(self, decoder: str = "mirror", epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
                 max_attacker_samples: Optional[int] = None, max_test_samples: Optional[int] = None,
                 progress: bool = True) -> None:
        if decoder not in DECODERS:
            raise BenchError(f"unknown decoder '{decoder}' for feature_inversion; choose one of {sorted(DECODERS)}")
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise BenchError(f"feature_inversion needs epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
        self.decoder = decoder
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_attacker_samples = max_attacker_samples
        self.max_test_samples = max_test_samples
        self.progress = progress

    def build_decoder(self, module, released: Tensor, image_shape: Sequence[int]) -> tuple[nn.Module, str]:
        """The configured decoder, checked on a sample of released tensors (mirror falls back to upsampling)."""
        client, released_shape = module.client_network(), tuple(released.shape[1:])
        try:
            decoder = DECODERS[self.decoder](client, released_shape, image_shape)
            _check_decoder(decoder, released, image_shape)
            return decoder, self.decoder
        except BenchError as error:
            if self.decoder != "mirror":
                raise
            warnings.warn(f"feature_inversion: {error}; falling back to the upsampling decoder", stacklevel=2)
            return DECODERS["upsampling"](client, released_shape, image_shape), "upsampling"

    def run(self, module, datamodule, generator: torch.Generator) -> AttackResult:
        device = module.device
        train_images, _ = datamodule.pool("attacker").tensors()
        test_images, _ = datamodule.pool("test").tensors()
        train_images = train_images[: self.max_attacker_samples]
        test_images = test_images[: self.max_test_samples]
        train_released = query_client(module.release, train_images, self.batch_size, device)
        test_released = query_client(module.release, test_images, self.batch_size, device)

        with torch.random.fork_rng(devices=[]):  # the decoder's initial weights follow the harness's seed
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
            decoder, decoder_used = self.build_decoder(module, train_released[:2].cpu(), train_images.shape[1:])
        decoder = decoder.to(device)
        self._fit(decoder, train_released, train_images.to(device), generator)

        decoder.eval()
        with torch.no_grad():
            reconstructed = torch.cat([decoder(test_released[i : i + self.batch_size])
                                       for i in range(0, len(test_released), self.batch_size)])
        test_images = test_images.to(device)
        metrics = reconstruction_metrics(reconstructed, test_images)
        return AttackResult(metrics=metrics, examples=(test_images[:16].cpu(), reconstructed[:16].cpu()),
                            details={"decoder_used": decoder_used, "attacker_samples": len(train_images),
                                     "test_samples": len(test_images)})

    def _fit(self, decoder: nn.Module, released: Tensor, images: Tensor, generator: torch.Generator) -> None:
        fit_decoder(decoder, released, images, generator, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                    description=f"{self.name} decoder", progress=self.progress)


def fit_decoder(decoder: nn.Module, inputs: Tensor, images: Tensor, generator: torch.Generator, *, epochs: int,
                batch_size: int, lr: float, description: str, progress: bool) -> None:
    """Train ``decoder`` to map ``inputs`` to ``images`` by MSE with Adam (its frozen layers stay as they are)."""
    optimizer = torch.optim.Adam([p for p in decoder.parameters() if p.requires_grad], lr=lr)
    # batch-norm cannot train on one sample: a remainder of one is skipped, and seen next epoch
    skip_single = any(isinstance(layer, nn.modules.batchnorm._BatchNorm) for layer in decoder.modules())
    decoder.train()
    bar = tqdm(range(epochs), desc=description, disable=not progress, leave=False, dynamic_ncols=True)
    for _ in bar:
        order = torch.randperm(len(images), generator=generator).to(images.device)
        total = torch.zeros((), device=images.device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if skip_single and len(batch) < 2 and len(order) > 1:
                continue
            loss = F.mse_loss(decoder(inputs[batch]), images[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(batch)
        if progress:
            bar.set_postfix(mse=f"{total.item() / len(order):.4f}", refresh=False)
