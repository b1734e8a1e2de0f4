"""The learned attackers' training loop: early stopping on the attacker's own validation split, the best
state restored, the budget used in the record, and the harness's budget check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.attacks import FeatureInversion, LearnedPhaseInversion, MeasurementDecoder, PhaseInversion, PseudoInverse
from bench.attacks.training import fit_decoder, train_until_plateau, validation_loss, validation_split
from bench.datamodules import Digits
from bench.errors import BenchError
from bench.harness import evaluate
from bench.modules import SplitNetwork


class _Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def _rise_then_fall(model, batch, generator):
    """Training pushes w up at a constant rate; the validation loss (w - 3)^2 is least at w = 3, then rises."""
    return -model.w if model.training else (model.w - 3).square()


def test_training_stops_on_a_validation_plateau_and_restores_the_best_state():
    model = _Scalar()
    # Adam under a constant gradient moves w by exactly lr per step: w = 0.5 * epoch, best at epoch 6
    report = train_until_plateau(
        model,
        _rise_then_fall,
        torch.arange(4),
        torch.arange(4, 6),
        torch.Generator().manual_seed(0),
        max_epochs=100,
        patience=3,
        batch_size=8,
        lr=0.5,
    )
    assert report.best_epoch == 6 and report.epochs_run == 9, "three epochs without improvement, then stop"
    assert report.converged
    assert model.w.item() == pytest.approx(3.0, abs=1e-4), "the state of the best epoch, not the last"
    assert report.validation_loss == pytest.approx(0.0, abs=1e-6)
    assert (report.train_samples, report.validation_samples) == (4, 2)


def test_a_run_that_hits_its_maximum_is_not_converged():
    model = _Scalar()
    report = train_until_plateau(
        model,
        _rise_then_fall,
        torch.arange(4),
        torch.arange(4, 6),
        torch.Generator().manual_seed(0),
        max_epochs=4,
        patience=3,
        batch_size=8,
        lr=0.5,
    )
    assert (report.epochs_run, report.max_epochs, report.best_epoch) == (4, 4, 4)
    assert not report.converged
    assert model.w.item() == pytest.approx(2.0, abs=1e-4)


def test_a_decoder_on_unlearnable_targets_stops_early_at_its_best_validation_state():
    torch.manual_seed(0)
    inputs, images = torch.randn(200, 16), torch.rand(200, 1, 4, 4)  # images independent of inputs: only overfitting
    decoder = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 16), nn.Unflatten(1, (1, 4, 4)))
    report = fit_decoder(
        decoder,
        inputs,
        images,
        torch.Generator().manual_seed(0),
        epochs=500,
        patience=5,
        batch_size=20,
        lr=1e-2,
        validation_fraction=0.2,
        description="test",
        progress=False,
    )
    assert report.converged and report.epochs_run < 100 and report.epochs_run == report.best_epoch + 5
    _, validation = validation_split(200, 0.2, torch.Generator().manual_seed(0))  # the split fit_decoder drew first
    restored = validation_loss(
        decoder, lambda model, batch, _: F.mse_loss(model(inputs[batch]), images[batch]), validation, 0, 64
    )
    assert restored == pytest.approx(report.validation_loss, rel=1e-5)
    assert not decoder.training


def test_validation_split_is_disjoint_and_keeps_both_sides():
    train, validation = validation_split(10, 0.25, torch.Generator().manual_seed(1))
    assert len(validation) == 2 and len(train) == 8
    assert sorted(torch.cat([train, validation]).tolist()) == list(range(10))
    assert len(validation_split(2, 0.01, torch.Generator())[1]) == 1
    with pytest.raises(BenchError, match="at least 2"):
        validation_split(1, 0.1, torch.Generator())


@pytest.mark.parametrize(
    "kwargs", [{"patience": 0}, {"epochs": 0}, {"validation_fraction": 1.0}, {"validation_fraction": 0}]
)
def test_learned_attacks_reject_budgets_that_cannot_train(kwargs):
    for attack in (FeatureInversion, MeasurementDecoder, PhaseInversion, LearnedPhaseInversion):
        with pytest.raises(BenchError, match="epochs|validation_fraction"):
            attack(**kwargs)


def test_records_carry_the_budget_used_and_the_budget_check_reruns_at_twice_the_budget():
    datamodule = Digits(pool_limit=64)
    attack = FeatureInversion(decoder="upsampling", epochs=2, patience=1, progress=False)
    evaluation = evaluate(SplitNetwork(data_spec=datamodule.spec), datamodule, [attack], budget_check=True)
    details = evaluation.privacy[0]["details"]
    assert details["max_epochs"] == 2 and 1 <= details["epochs_run"] <= 2
    assert isinstance(details["converged"], bool)
    assert details["training"]["decoder"]["train_samples"] + details["training"]["decoder"]["validation_samples"] == 64
    check = details["budget_check"]
    assert check["factor"] == 2 and check["budget"] == {"epochs": 4, "patience": 2} and check["metric"] == "mse"
    assert check["value"] == evaluation.privacy[0]["metrics"]["mse"]
    assert check["relative_change"] == pytest.approx((check["value_at_factor"] - check["value"]) / check["value"])
    assert attack.epochs == 2, "the rerun is a copy"
    assert (
        "budget_check"
        not in evaluate(SplitNetwork(data_spec=datamodule.spec), datamodule, [attack]).privacy[0]["details"]
    )
    assert PseudoInverse.budget_args == () and FeatureInversion().with_budget(2).epochs == 2 * FeatureInversion().epochs


def test_among_feature_release_attacks_only_the_methods_own_decoder_is_a_diagnostic():
    from bench import registry
    from bench.threat_models import Capability, Role, ThreatModel

    attacks = [cls for cls in registry.attacks().values() if cls.threat_model is ThreatModel.FEATURE_RELEASE]
    diagnostics = [cls.name for cls in attacks if cls.role is Role.DIAGNOSTIC]
    assert diagnostics == ["own_decoder"]  # RAN's D and DCMG's generator: training-time parts the adversary lacks
    assert [cls.name for cls in attacks if Capability.OWN_RECONSTRUCTION in cls.requires] == ["own_decoder"]
