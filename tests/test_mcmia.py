"""MCMIA's variants (baseline, pruning, Min-Max, both) and the DP-SGD baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import StepRecorder
from helpers import quiet_trainer as _trainer
from helpers import synthetic_spec as _spec
from lightning.pytorch.callbacks import ModelCheckpoint

from bench.attacks import LossThreshold
from bench.callbacks import PrivacyEvaluation
from bench.cli import load_checkpoint
from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules.mcmia import MCMIA
from bench.networks.classifiers import InferenceModel
from bench.networks.registry import Role, build_network, network_names


# ---------------------------------------------------------------------------- networks
@pytest.mark.parametrize("name", network_names(Role.CLASSIFIER))
def test_every_classifier_adapts_to_the_data(name):
    shape = (1, 28, 28) if name == "lenet5" else (3, 32, 32)
    network = build_network(name, Role.CLASSIFIER, _spec(shape, classes=7)).eval()
    assert network(torch.rand(2, *shape)).shape == (2, 7)
    assert all(m.training for m in build_network(name, Role.CLASSIFIER, _spec(shape, classes=7)).modules()), (
        "built in training mode"
    )


def test_lenet5_on_mnist_has_the_papers_60k_weights():
    weights = sum(p.numel() for p in build_network("lenet5", Role.CLASSIFIER, _spec((1, 28, 28))).parameters())
    assert 55_000 < weights < 65_000  # Table V: 60 K


def test_inference_model_has_nasrs_architecture_and_init():
    h = InferenceModel(num_classes=100)
    widths = [(layer.in_features, layer.out_features) for layer in h.modules() if isinstance(layer, torch.nn.Linear)]
    assert widths == [(100, 1024), (1024, 512), (512, 64), (100, 512), (512, 64), (128, 256), (256, 64), (64, 1)]
    assert h.prediction[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert h(torch.rand(3, 100).softmax(1), torch.tensor([0, 5, 99])).shape == (3,)


# ---------------------------------------------------------------------------- Min-Max game
class _RecordingMCMIA(StepRecorder, MCMIA):
    recorded_parts = ("network", "inference")


@pytest.mark.parametrize("k", [1, 2])
def test_min_max_schedule_follows_algorithm_1(k):
    datamodule = Digits(batch_size=16, pool_limit=64)
    module = _RecordingMCMIA(data_spec=datamodule.spec, defense="minmax", inference_steps=k)
    trainer = _trainer(limit_train_batches=3)
    trainer.fit(module, datamodule)
    one_batch = [("gain", frozenset({"inference"}))] * k + [("classifier", frozenset({"network"}))]
    assert module.steps == one_batch * 3
    assert trainer.global_step == 3 * (k + 1)


def test_gain_is_eq_1_and_minmax_weight_zero_is_plain_cross_entropy():
    module = MCMIA(data_spec=_spec(), defense="minmax", minmax_weight=0.0)
    member, reference = torch.randn(4, 10), torch.randn(5, 10)
    member_labels, reference_labels = torch.randint(0, 10, (4,)), torch.randint(0, 10, (5,))
    h_member = torch.sigmoid(module.inference(member.softmax(-1), member_labels))
    h_reference = torch.sigmoid(module.inference(reference.softmax(-1), reference_labels))
    expected = 0.5 * h_member.log().mean() + 0.5 * (1 - h_reference).log().mean()
    torch.testing.assert_close(module.gain(member, member_labels, reference, reference_labels), expected)

    # minmax_weight (gamma) = 0: the classifier's step is exactly a cross-entropy step
    datamodule = Digits(batch_size=16, pool_limit=32)
    torch.manual_seed(0)
    plain = MCMIA(data_spec=datamodule.spec, defense="none")
    module = MCMIA(data_spec=datamodule.spec, defense="minmax", minmax_weight=0.0)
    module.network.load_state_dict(plain.network.state_dict())
    for model in (plain, module):
        torch.manual_seed(1)  # the same mini-batches for both
        _trainer(limit_train_batches=2).fit(model, datamodule)
    for a, b in zip(plain.network.parameters(), module.network.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"defense": "prune"},
        {"minmax_weight": -1.0},
        {"inference_steps": 0},
        {"network": "alexnet"},
        {"defense": "pruning", "sparsity": 1.0},
    ],
)
def test_bad_settings_fail_with_a_clear_message(kwargs):
    with pytest.raises(BenchError):
        MCMIA(data_spec=_spec(), **kwargs)


# ---------------------------------------------------------------------------- pruning variants
@pytest.mark.parametrize("defense", ["pruning", "pruning_minmax"])
def test_pruned_variants_reach_the_sparsity_and_report_it(defense, tmp_path):
    datamodule = Digits(batch_size=32, pool_limit=128)
    module = MCMIA(
        data_spec=datamodule.spec, defense=defense, sparsity=0.9, interval="step", update_every=2, admm_updates=2
    )
    evaluation = PrivacyEvaluation(
        attacks=[LossThreshold(shadow_epochs=2)], records_dir=str(tmp_path), leaderboard_dir=None
    )
    _trainer(max_epochs=2, callbacks=[evaluation]).fit(module, datamodule)
    layers = [m for m in module.network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer in layers:
        kept = int(torch.count_nonzero(layer.weight_orig * layer.weight_mask))
        assert kept == layer.weight_mask.numel() - round(0.9 * layer.weight_mask.numel())
    if defense == "pruning_minmax":
        assert not any(hasattr(m, "weight_mask") for m in module.inference.modules()), "h is never pruned"
    record = json.loads(evaluation.last_record_path.read_text())
    assert Path(record["artifacts"]["roc"]).stat().st_size > 1000, (
        "the attacks' ROC curves are plotted beside the record"
    )
    cost = record["cost"]
    assert cost["parameters"] == sum(p.numel() for p in module.network.parameters())  # the deployed network
    assert cost["compression_ratio"] == pytest.approx(cost["parameters"] / cost["nonzero_parameters"])
    assert cost["compression_ratio"] > 5
    assert {key for key in cost if key.startswith("sparsity/")} == {
        f"sparsity/network.{n}" for n, m in module.network.named_modules() if m in layers
    }


def test_a_pruned_checkpoint_restores_for_bench_evaluate(tmp_path):
    datamodule = Digits(batch_size=32, pool_limit=64)
    module = MCMIA(data_spec=datamodule.spec, defense="pruning", interval="step", admm_updates=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    _trainer(callbacks=[checkpoint], enable_checkpointing=True).fit(module, datamodule)
    restored, _, _ = load_checkpoint(checkpoint.best_model_path, device="cpu")
    images = datamodule.pool("test").tensors()[0][:8]
    module.eval(), restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(images), module(images), rtol=0, atol=0)
    assert restored.training_report() == module.training_report()


# ---------------------------------------------------------------------------- DP-SGD
# DP-SGD's tests (Opacus's reference usage, the sampler, the accountant, the refusals, DDP) are in test_dpsgd.py.


# ---------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_pruning_and_min_max_under_ddp_keep_ranks_identical(tmp_path):
    from test_ddp import _ReportRanks

    datamodule = Digits(batch_size=32, pool_limit=128)
    module = MCMIA(data_spec=datamodule.spec, defense="pruning_minmax", interval="step", update_every=1, admm_updates=1)
    trainer = _trainer(
        devices=2, strategy="ddp_spawn", max_epochs=2, limit_val_batches=1, callbacks=[_ReportRanks(str(tmp_path))]
    )
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    assert max(report["max_weight_difference"] for report in reports) == 0.0


def test_the_deprecated_gamma_and_k_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="`gamma` is deprecated.*use `minmax_weight`"):
        module = MCMIA(data_spec=_spec(), defense="minmax", gamma=0.5, k=2)
    assert (module.hparams.minmax_weight, module.hparams.inference_steps) == (0.5, 2)
    assert "gamma" not in module.hparams and "k" not in module.hparams
