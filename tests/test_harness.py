"""The harness attacks what a method declares, nothing else, and its numbers mean what they say."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor, nn

from bench.attacks import FeatureInversion
from bench.datamodules import DataSpec, Digits
from bench.harness import evaluate
from bench.modules.base import PrivacyModule
from bench.threat_models import ThreatModel


class _Releasing(PrivacyModule):
    """A test method that releases a fixed function of its input and classifies with a linear layer."""

    abstract = True  # not a registered method
    threat_models = (ThreatModel.FEATURE_RELEASE,)

    def __init__(self, data_spec: Optional[DataSpec] = None) -> None:
        super().__init__(data_spec=data_spec)
        self.client = nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(data_spec.num_classes))

    def release(self, x: Tensor) -> Tensor:
        return self.client(x)

    def predict_from_release(self, released: Tensor) -> Tensor:
        return self.head(released.real if released.is_complex() else released)

    def client_network(self) -> nn.Module:
        return self.client


class _ReleasesNothing(_Releasing):
    abstract = True

    def release(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class _OutputsOnly(PrivacyModule):
    abstract = True
    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)

    def __init__(self, data_spec: Optional[DataSpec] = None) -> None:
        super().__init__(data_spec=data_spec)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def digits():
    return Digits(pool_limit=200)


def _attack(epochs: int = 60):
    return FeatureInversion(decoder="upsampling", epochs=epochs, batch_size=32, lr=3e-3, progress=False)


def test_inversion_separates_a_leaky_release_from_an_empty_one(digits):
    leaky = evaluate(_Releasing(digits.spec), digits, [_attack()]).privacy[0]["metrics"]
    empty = evaluate(_ReleasesNothing(digits.spec), digits, [_attack()]).privacy[0]["metrics"]
    test_images = digits.pool("test").tensors()[0]
    # with nothing released the best decoder outputs the attacker pool's mean image: MSE near the pixel variance
    assert empty["mse"] > 0.5 * test_images.var(dim=0).mean().item()
    assert leaky["mse"] < 0.5 * empty["mse"]
    assert leaky["psnr"] > empty["psnr"] and leaky["ssim"] > empty["ssim"]


def test_evaluation_is_deterministic_in_its_seed(digits):
    module = _Releasing(digits.spec)
    first = evaluate(module, digits, [_attack(epochs=3)], seed=7)
    second = evaluate(module, digits, [_attack(epochs=3)], seed=7)
    assert first.privacy[0]["metrics"] == second.privacy[0]["metrics"]
    assert first.utility == second.utility


def test_only_attacks_of_declared_threat_models_run(digits):
    evaluation = evaluate(_OutputsOnly(digits.spec), digits, [_attack(epochs=1)])
    assert evaluation.privacy == []
    assert "released_bytes_per_sample" not in evaluation.cost


def test_complex_releases_are_attacked_with_real_and_imaginary_channels(digits):
    class ComplexRelease(_Releasing):
        abstract = True

        def release(self, x: Tensor) -> Tensor:
            return torch.complex(x, -x)

    evaluation = evaluate(ComplexRelease(digits.spec), digits, [_attack(epochs=2)])
    assert evaluation.cost["released_bytes_per_sample"] == 64 * 8  # complex64
    assert evaluation.privacy[0]["details"]["decoder_used"] == "upsampling"


def test_cost_counts_parameters_bytes_and_flops(digits):
    from bench.modules import SplitNetwork

    module = SplitNetwork(data_spec=digits.spec)
    cost = evaluate(module, digits, []).cost
    assert cost["parameters"] == sum(p.numel() for p in module.parameters())
    assert cost["released_bytes_per_sample"] == module.release(torch.zeros(1, 1, 8, 8)).numel() * 4
    assert cost["raw_bytes_per_sample"] == 64
    assert cost["client_flops_per_sample"] > 0


def test_mirror_decoder_falls_back_when_the_client_cannot_be_mirrored(digits):
    with pytest.warns(UserWarning, match="falling back"):
        evaluation = evaluate(_Releasing(digits.spec), digits,
                              [FeatureInversion(decoder="mirror", epochs=1, progress=False)])
    # an Identity client has no layer to mirror: the record says which decoder was used instead
    assert evaluation.privacy[0]["details"]["decoder_used"] == "upsampling"
    assert evaluation.privacy[0]["config"]["decoder"] == "mirror"
