"""The phase-estimation attack, the server's view without theta, and the U-Net decoder."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from helpers import synthetic_spec
from torch import nn

from bench.attacks import DECODERS, FeatureInversion, LearnedPhaseInversion, PhaseInversion
from bench.attacks.phase_inversion import angle_error, estimate_phase, fit_phase_estimator
from bench.datamodules import Digits
from bench.errors import BenchError
from bench.harness import evaluate
from bench.modules import ComplexNet, ComplexNetBaseline, SplitNetwork
from bench.networks.complex import rotate
from bench.networks.unet import UNetDecoder


def test_angle_error_is_wrapped_to_zero_pi():
    true = torch.tensor([0.1, 0.0, 3.0, 6.0, 1.0])
    estimated = torch.tensor([2 * math.pi - 0.1, math.pi, 3.0 + 4 * math.pi, 0.2, 1.0 + math.pi + 0.5])
    torch.testing.assert_close(
        angle_error(estimated, true),
        torch.tensor([0.2, math.pi, 0.0, 2 * math.pi - 5.8, math.pi - 0.5]),
        atol=1e-5,
        rtol=0,
    )
    random = angle_error(torch.rand(100_000) * 2 * math.pi, torch.rand(100_000) * 2 * math.pi)
    assert random.min() >= 0 and random.max() <= math.pi
    assert random.mean().item() == pytest.approx(math.pi / 2, abs=0.01)  # a blind guess


class _DistanceCritic(nn.Module):
    """Scores a feature by its closeness to one known real feature: the best possible D' for that feature."""

    def __init__(self, real: torch.Tensor) -> None:
        super().__init__()
        self.real = real

    def forward(self, features):
        return -(features - self.real).square().flatten(1).sum(1, keepdim=True)


def test_estimate_phase_finds_the_angle_a_perfect_critic_prefers():
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    theta = torch.rand(40) * 2 * math.pi
    released = rotate(torch.complex(a, b).repeat(40, 1, 1, 1), theta)
    estimated = estimate_phase(_DistanceCritic(a), released, grid=90, chunk=16)
    assert angle_error(estimated, theta).max() <= math.pi / 90 + 1e-5  # within half a grid step


class _NoFooling(ComplexNet):
    """Releases exp(i theta) a: no fooling counterpart to confuse the phase."""

    abstract = True

    def fooling_counterpart(self, a):
        return torch.zeros_like(a)


def _fit(module, datamodule, epochs=5):
    L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    ).fit(module, datamodule)
    return module


def test_the_phase_is_found_without_a_fooling_counterpart_and_hidden_with_one():
    torch.manual_seed(0)
    datamodule = Digits(batch_size=64)
    attack = PhaseInversion(epochs=15, critic_epochs=15, progress=False)
    exposed = evaluate(
        _fit(_NoFooling(data_spec=datamodule.spec, lr=3e-3, n_critic=1), datamodule), datamodule, [attack]
    )
    (entry,) = exposed.privacy
    assert entry["attack"] == "phase_inversion"
    metrics = entry["metrics"]
    assert metrics["angle_error"] < 0.25, "with b = 0 the de-rotated feature is a only at the true angle"
    # the estimated phase is as good as the true one for the decoder
    assert metrics["mae"] == pytest.approx(entry["details"]["true_phase_mae"], abs=0.02)
    # the server, without theta, does far worse than the client
    assert metrics["server_accuracy"] < exposed.utility["accuracy"] - 0.2

    torch.manual_seed(0)
    hidden = evaluate(
        _fit(ComplexNet(data_spec=datamodule.spec, lr=3e-3, n_critic=1), datamodule), datamodule, [attack]
    )
    assert hidden.privacy[0]["metrics"]["angle_error"] > metrics["angle_error"] + 0.2
    assert 0 <= hidden.privacy[0]["metrics"]["angle_error"] <= math.pi
    assert set(hidden.privacy[0]["metrics"]) == set(PhaseInversion.metric_directions)


def test_the_attack_applies_only_to_methods_that_expose_their_real_features():
    datamodule = Digits(pool_limit=48)
    attack = PhaseInversion()
    assert attack.applies_to(ComplexNet(data_spec=datamodule.spec))
    assert not attack.applies_to(SplitNetwork(data_spec=datamodule.spec))
    assert not attack.applies_to(ComplexNetBaseline(data_spec=datamodule.spec, variant="noisy"))
    with pytest.raises(BenchError, match="decoder"):
        PhaseInversion(decoder="transformer")
    with pytest.raises(BenchError, match="grid"):
        PhaseInversion(grid=1)


@pytest.mark.parametrize(
    ("released_shape", "image_shape"),
    [((12, 8, 8), (1, 8, 8)), ((6, 14, 14), (1, 28, 28)), ((32, 16, 16), (3, 32, 32)), ((5, 7, 9), (3, 20, 24))],
)
def test_unet_decoder_maps_any_released_shape_to_the_image(released_shape, image_shape):
    decoder = UNetDecoder(released_shape, image_shape, width=8, convs_per_block=2)
    out = decoder(torch.randn(2, *released_shape))
    assert out.shape == (2, *image_shape) and out.min() >= 0 and out.max() <= 1
    # the paper's revision: six convolutions per block, as many levels as the image allows (at most four)
    paper = DECODERS["unet"](None, released_shape, image_shape)
    assert all(
        sum(isinstance(layer, nn.Conv2d) for layer in block) == 6 for block in [paper.stem, *paper.down, *paper.up]
    )
    assert len(paper.down) == min(4, int(math.log2(min(image_shape[1:]) // 4)))


def test_dec_x_with_the_unet_reads_complex_releases_as_two_real_channels():
    datamodule = Digits(pool_limit=96)
    module = ComplexNet(data_spec=datamodule.spec)
    result = evaluate(module, datamodule, [FeatureInversion(decoder="unet", epochs=1, progress=False)])
    assert result.privacy[0]["details"]["decoder_used"] == "unet"


@pytest.mark.slow
def test_tiny_config_runs_both_inversion_strategies_and_both_phase_estimators(tmp_path, monkeypatch):
    from bench.cli import main
    from bench.records import load_records

    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            "complex/tiny",
            "--data.pool_limit",
            "96",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--evaluation.leaderboard_dir",
            "null",
        ]
    )
    record = load_records([tmp_path / "runs" / "leaderboard" / "records"]).records[0]
    assert record["method"]["name"] == "ComplexNet"
    entries = {entry["attack"]: entry for entry in record["privacy"]}
    assert set(entries) == {"feature_inversion", "phase_inversion", "learned_phase_inversion"}  # both phase estimators
    assert (
        entries["feature_inversion"]["details"]["decoder_used"]
        == entries["phase_inversion"]["details"]["decoder_used"]
        == "unet_small"
    )
    assert 0 <= entries["phase_inversion"]["metrics"]["angle_error"] <= math.pi
    assert set(record["artifacts"]) == {
        "feature_inversion_examples",
        "phase_inversion_examples",
        "learned_phase_inversion_examples",
    }


def _fit_estimator(released, theta, epochs=20):
    return fit_phase_estimator(
        released,
        theta,
        torch.Generator().manual_seed(0),
        epochs=epochs,
        patience=10,
        validation_fraction=0.2,
        batch_size=64,
        lr=1e-2,
        width=8,
    )


def test_the_learned_estimator_reads_the_phase_off_a_constant_background():
    torch.manual_seed(0)
    n = 600
    a = torch.full((n, 2, 8, 8), 0.6)  # the encoder's constant feature where the image is blank
    a[:, :, 2:6, 2:6] = torch.randn(n, 2, 4, 4).relu()  # the "digit"
    b = a.roll(1, 0)  # another sample's feature: the same constant on the background
    theta = torch.rand(n) * 2 * math.pi
    released = rotate(torch.complex(a, b), theta)
    estimator, report = _fit_estimator(released[:400], theta[:400])
    error = angle_error(estimator.angles(released[400:]), theta[400:])
    assert error.mean().item() < 0.05, report


def test_the_learned_estimator_is_at_chance_on_a_rotation_invariant_release():
    torch.manual_seed(0)
    n = 1000
    noise = torch.complex(torch.randn(n, 2, 8, 8), torch.randn(n, 2, 8, 8))  # circular Gaussian: exp(i theta) z ~ z
    theta = torch.rand(n) * 2 * math.pi
    released = rotate(noise, theta)
    estimator, _ = _fit_estimator(released[:500], theta[:500])
    error = angle_error(estimator.angles(released[500:]), theta[500:])
    # a uniform error on [0, pi] has mean pi / 2 and standard error 0.91 / sqrt(500) = 0.04
    assert error.mean().item() == pytest.approx(math.pi / 2, abs=0.15)


def test_both_phase_attacks_report_the_angle_and_the_budget_of_each_learner():
    torch.manual_seed(0)
    datamodule = Digits(pool_limit=128)
    module = ComplexNet(data_spec=datamodule.spec)  # untrained: the encoder's biases give the background a constant c
    common = dict(decoder="upsampling", epochs=2, patience=10, batch_size=32, progress=False)
    evaluation = evaluate(
        module,
        datamodule,
        [
            PhaseInversion(critic_epochs=2, **common),
            LearnedPhaseInversion(estimator_epochs=30, estimator_lr=1e-2, **common),
        ],
    )
    dprime, learned = evaluation.privacy
    assert (dprime["attack"], learned["attack"]) == ("phase_inversion", "learned_phase_inversion")
    assert set(dprime["details"]["training"]) == {"decoder", "critic"}
    assert set(learned["details"]["training"]) == {"decoder", "estimator"}
    assert learned["details"]["training"]["estimator"]["max_epochs"] == 30
    assert learned["role"] == "adversary" and set(learned["metrics"]) == set(LearnedPhaseInversion.metric_directions)
    assert learned["metrics"]["angle_error"] < 0.1, "the background's phase theta + pi / 4 gives theta away"
    assert learned["metrics"]["angle_error"] < dprime["metrics"]["angle_error"]


def test_a_bias_free_encoder_releases_nothing_on_a_blank_background():
    datamodule = Digits(pool_limit=16)
    blank = torch.zeros(4, *datamodule.spec.image_shape)
    assert ComplexNet(data_spec=datamodule.spec, encoder_bias=False).release(blank).abs().max().item() == 0.0
    assert ComplexNet(data_spec=datamodule.spec).release(blank).abs().max().item() > 0
    assert ComplexNet(data_spec=datamodule.spec, encoder_bias=False).label == "Complex-valued (bias-free encoder)"
    with pytest.raises(BenchError, match="bias-free"):
        ComplexNet(network="resnet20_alpha", data_spec=synthetic_spec((3, 32, 32)), encoder_bias=False)


def test_both_phase_attacks_share_one_decoder_fit_without_changing_either_result(monkeypatch):
    import bench.attacks.feature_inversion as feature_inversion

    fits = []
    fit = feature_inversion.FeatureInversion._fit_decoder
    monkeypatch.setattr(
        feature_inversion.FeatureInversion,
        "_fit_decoder",
        lambda self, *args: fits.append(self.epochs) or fit(self, *args),
    )
    torch.manual_seed(0)
    datamodule = Digits(pool_limit=48)
    module = ComplexNet(data_spec=datamodule.spec)
    common = dict(decoder="upsampling", epochs=3, patience=10, batch_size=32, progress=False)
    attacks = [PhaseInversion(critic_epochs=2, **common), LearnedPhaseInversion(estimator_epochs=3, **common)]

    def run(chosen, budget_check=False):
        feature_inversion.clear_fitted_decoders()
        fits.clear()
        return evaluate(module, datamodule, chosen, budget_check=budget_check).privacy

    together = run(attacks)
    assert fits == [3], "the second phase attack reuses the first one's dec"
    alone = [run([attack])[0] for attack in attacks]
    for shared, own in zip(together, alone):
        assert shared["metrics"] == own["metrics"]
        assert shared["details"] == own["details"]  # the decoder's training report included
    assert together[0]["details"]["training"]["decoder"] == together[1]["details"]["training"]["decoder"]

    run(attacks, budget_check=True)
    assert fits == [3, 6], "the budget check's reruns share their (twice as long) fit too"
    feature_inversion.clear_fitted_decoders()
    fits.clear()
    run(attacks[:1])
    with torch.no_grad():
        next(module.encoder.parameters()).add_(0.1)  # another client state: another fit
    evaluate(module, datamodule, attacks[1:])
    assert fits == [3, 3]
