"""MCMIA's variants (baseline, pruning, Min-Max, both) and the DP-SGD baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from bench.attacks import LossThreshold
from bench.callbacks import PrivacyEvaluation
from bench.cli import load_checkpoint
from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules.mcmia import DPSGD, MCMIA, RDP_ORDERS
from bench.networks.classifiers import InferenceModel
from bench.networks.registry import Role, build_network, network_names
from bench.records import load_records
from helpers import StepRecorder, quiet_trainer as _trainer, synthetic_spec as _spec


# ---------------------------------------------------------------------------- networks
@pytest.mark.parametrize("name", network_names(Role.CLASSIFIER))
def test_every_classifier_adapts_to_the_data(name):
    shape = (1, 28, 28) if name == "lenet5" else (3, 32, 32)
    network = build_network(name, Role.CLASSIFIER, _spec(shape, classes=7)).eval()
    assert network(torch.rand(2, *shape)).shape == (2, 7)
    assert all(m.training for m in build_network(name, Role.CLASSIFIER, _spec(shape, classes=7)).modules()), "built in training mode"


def test_lenet5_on_mnist_has_the_papers_60k_weights():
    weights = sum(p.numel() for p in build_network("lenet5", Role.CLASSIFIER, _spec((1, 28, 28))).parameters())
    assert 55_000 < weights < 65_000  # Table V: 60 K


def test_inference_model_has_nasrs_architecture_and_init():
    h = InferenceModel(num_classes=100)
    widths = [(l.in_features, l.out_features) for l in h.modules() if isinstance(l, torch.nn.Linear)]
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


@pytest.mark.parametrize("kwargs", [{"defense": "prune"}, {"minmax_weight": -1.0}, {"inference_steps": 0}, {"network": "alexnet"},
                                    {"defense": "pruning", "sparsity": 1.0}])
def test_bad_settings_fail_with_a_clear_message(kwargs):
    with pytest.raises(BenchError):
        MCMIA(data_spec=_spec(), **kwargs)


# ---------------------------------------------------------------------------- pruning variants
@pytest.mark.parametrize("defense", ["pruning", "pruning_minmax"])
def test_pruned_variants_reach_the_sparsity_and_report_it(defense, tmp_path):
    datamodule = Digits(batch_size=32, pool_limit=128)
    module = MCMIA(data_spec=datamodule.spec, defense=defense, sparsity=0.9, interval="step", update_every=2,
                   admm_updates=2)
    evaluation = PrivacyEvaluation(attacks=[LossThreshold(shadow_epochs=2)], records_dir=str(tmp_path),
                                   leaderboard_dir=None)
    _trainer(max_epochs=2, callbacks=[evaluation]).fit(module, datamodule)
    layers = [m for m in module.network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer in layers:
        kept = int(torch.count_nonzero(layer.weight_orig * layer.weight_mask))
        assert kept == layer.weight_mask.numel() - round(0.9 * layer.weight_mask.numel())
    if defense == "pruning_minmax":
        assert not any(hasattr(m, "weight_mask") for m in module.inference.modules()), "h is never pruned"
    record = json.loads(evaluation.last_record_path.read_text())
    assert Path(record["artifacts"]["roc"]).stat().st_size > 1000, "the attacks' ROC curves are plotted beside the record"
    cost = record["cost"]
    assert cost["parameters"] == sum(p.numel() for p in module.network.parameters())  # the deployed network
    assert cost["compression_ratio"] == pytest.approx(cost["parameters"] / cost["nonzero_parameters"])
    assert cost["compression_ratio"] > 5
    assert {key for key in cost if key.startswith("sparsity/")} == {f"sparsity/network.{n}" for n, m in
                                                                    module.network.named_modules() if m in layers}


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
def test_per_sample_gradients_match_one_sample_at_a_time():
    module = DPSGD(data_spec=_spec(), noise_multiplier=1.0)
    images, labels = torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,))
    batched = module.per_sample_gradients(images, labels)
    for i in range(3):
        module.zero_grad()
        F.cross_entropy(module(images[i : i + 1]), labels[i : i + 1]).backward()
        for name, parameter in module.network.named_parameters():
            torch.testing.assert_close(batched[name][i], parameter.grad, rtol=1e-4, atol=1e-6)


def _clipped_mean_gradients(module, images, labels, max_grad_norm):
    """The noiseless DP-SGD update direction, computed the naive way: clip each sample's gradient, average."""
    gradients = module.per_sample_gradients(images, labels)
    norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gradients.values()))
    scale = (max_grad_norm / norms).clamp(max=1)
    return {name: (g * scale.view(-1, *[1] * (g.dim() - 1))).mean(0) for name, g in gradients.items()}


def test_dp_sgd_without_noise_steps_with_the_mean_clipped_gradient():
    datamodule = Digits(batch_size=8, pool_limit=8)
    module = DPSGD(data_spec=datamodule.spec, noise_multiplier=0.0, max_grad_norm=1e-3, lr=1.0, momentum=0.0)
    before = {n: p.detach().clone() for n, p in module.network.named_parameters()}
    clipped = _clipped_mean_gradients(module, *datamodule.pool("train").tensors(), max_grad_norm=1e-3)
    _trainer(limit_train_batches=1).fit(module, datamodule)
    for name, parameter in module.network.named_parameters():
        torch.testing.assert_close(before[name] - parameter.detach(), clipped[name], rtol=1e-3, atol=1e-7)


def test_dp_sgd_spends_the_target_epsilon_and_the_record_says_so(tmp_path):
    datamodule = Digits(batch_size=16, pool_limit=64)
    module = DPSGD(data_spec=datamodule.spec, target_epsilon=3.0, delta=1e-4)
    evaluation = PrivacyEvaluation(attacks=[], records_dir=str(tmp_path / "records"), leaderboard_dir=None)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    _trainer(max_epochs=3, callbacks=[evaluation, checkpoint], enable_checkpointing=True).fit(module, datamodule)
    assert int(module.dp_steps) == 3 * 4 and float(module.dp_noise_multiplier) > 0
    assert module.epsilon() == pytest.approx(3.0, rel=0.05)
    record = load_records([tmp_path / "records"]).records[0]
    assert record["cost"]["dp_epsilon"] == pytest.approx(module.epsilon())
    restored, _, _ = load_checkpoint(checkpoint.best_model_path, device="cpu")
    assert restored.epsilon() == pytest.approx(module.epsilon())


def test_the_private_gradient_is_opacus_dp_optimizer_step_to_1e6():
    """Clipping, per-parameter noise and the expected-batch scaling, against Opacus's GradSampleModule + DPOptimizer."""
    import copy
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    module = DPSGD(data_spec=_spec(), noise_multiplier=1.3, max_grad_norm=0.5)
    images, labels = torch.rand(7, 1, 8, 8), torch.randint(0, 10, (7,))
    expected_batch = 6.0  # Poisson: the batch drawn (7) is not the batch expected (q x members)
    reference = GradSampleModule(copy.deepcopy(module.network))
    optimizer = DPOptimizer(torch.optim.SGD(reference.parameters(), lr=1.0), noise_multiplier=1.3, max_grad_norm=0.5,
                            expected_batch_size=int(expected_batch))
    F.cross_entropy(reference(images), labels).backward()
    torch.manual_seed(5)
    optimizer.pre_step()  # clip_and_accumulate, add_noise, scale_grad
    torch.manual_seed(5)
    summed, _ = module.clipped_sum(images, labels)
    ours = {name: g / expected_batch for name, g in module.add_noise(summed).items()}
    for (name, _), parameter in zip(module.network.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours[name], parameter.grad, rtol=0, atol=1e-6)


def test_dp_sgd_samples_by_poisson_and_reports_both_accountants():
    from opacus.accountants import PRVAccountant, RDPAccountant

    datamodule = Digits(batch_size=16, pool_limit=64)
    module = DPSGD(data_spec=datamodule.spec, noise_multiplier=1.0)
    sizes = []
    original = module.poisson_batch

    def spy():
        batch = original()
        sizes.append(len(batch[0]))
        return batch

    module.poisson_batch = spy
    _trainer(max_epochs=3).fit(module, datamodule)
    assert float(module.dp_sample_rate) == 0.25 and len(sizes) == 12
    assert len(set(sizes)) > 1, "Poisson batches vary in size (fixed shuffled batches would all be 16)"
    report = module.training_report()
    for accountant, key in ((RDPAccountant(), "dp_epsilon"), (PRVAccountant(), "dp_epsilon_prv")):
        accountant.history = [(1.0, 0.25, 12)]
        kwargs = {"alphas": RDP_ORDERS} if key == "dp_epsilon" else {}
        assert report[key] == pytest.approx(accountant.get_epsilon(1e-5, **kwargs))
    assert report["dp_epsilon_prv"] <= report["dp_epsilon"] + 1e-6  # PRV is the tighter of the two


def test_an_unreachable_dp_target_fails_with_one_line_before_training():
    datamodule = Digits(batch_size=64, pool_limit=64)
    module = DPSGD(data_spec=datamodule.spec, target_epsilon=1e-6, delta=1e-9)
    module.training_step = lambda *a: pytest.fail("DP-SGD trained")
    with pytest.raises(BenchError, match="cannot reach epsilon"):
        _trainer(max_epochs=50).fit(module, datamodule)


def test_dp_sgd_refuses_batch_norm_networks():
    with pytest.raises(BenchError, match="batch-norm"):
        DPSGD(data_spec=_spec((3, 32, 32)), network="resnet18")


# ---------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_pruning_and_min_max_under_ddp_keep_ranks_identical(tmp_path):
    from test_ddp import _ReportRanks

    datamodule = Digits(batch_size=32, pool_limit=128)
    module = MCMIA(data_spec=datamodule.spec, defense="pruning_minmax", interval="step", update_every=1, admm_updates=1)
    trainer = _trainer(devices=2, strategy="ddp_spawn", max_epochs=2, limit_val_batches=1,
                       callbacks=[_ReportRanks(str(tmp_path))])
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    assert max(report["max_weight_difference"] for report in reports) == 0.0


@pytest.mark.slow
def test_dp_sgd_under_ddp_is_one_step_on_the_global_batch(tmp_path):
    from test_ddp import _ReportRanks

    # noiseless, so the step is exact: two ranks of 4 members each step as one process on all 8
    datamodule = Digits(batch_size=4, pool_limit=8)
    module = DPSGD(data_spec=datamodule.spec, noise_multiplier=0.0, max_grad_norm=1e-3, lr=1.0, momentum=0.0)
    before = {n: p.detach().clone() for n, p in module.network.named_parameters()}
    clipped = _clipped_mean_gradients(module, *datamodule.pool("train").tensors(), max_grad_norm=1e-3)
    trainer = _trainer(devices=2, strategy="ddp_spawn", limit_train_batches=1, limit_val_batches=1,
                       callbacks=[_ReportRanks(str(tmp_path))])
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert max(report["max_weight_difference"] for report in reports) == 0.0
    assert float(module.dp_sample_rate) == 1.0 and int(module.dp_steps) == 1  # 2 ranks x 4 of 8 members
    for name, parameter in module.network.named_parameters():
        torch.testing.assert_close(before[name] - parameter.detach(), clipped[name], rtol=1e-3, atol=1e-7)


def test_the_deprecated_gamma_and_k_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="`gamma` is deprecated.*use `minmax_weight`"):
        module = MCMIA(data_spec=_spec(), defense="minmax", gamma=0.5, k=2)
    assert (module.hparams.minmax_weight, module.hparams.inference_steps) == (0.5, 2)
    assert "gamma" not in module.hparams and "k" not in module.hparams
