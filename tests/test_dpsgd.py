"""DP-SGD through Opacus's own pieces in Lightning: the reference usage, the sampler, the accountant, the refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import quiet_trainer as _trainer
from helpers import synthetic_spec as _spec
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from bench.callbacks import PrivacyEvaluation
from bench.cli import load_checkpoint
from bench.datamodules import Digits
from bench.errors import BenchError
from bench.modules import DPSGD
from bench.modules.dpsgd import RDP_ORDERS
from bench.records import load_records


class _RecordingDPSGD(DPSGD):
    """Records every private batch and the global random state its noise is drawn from."""

    def private_batch(self):
        images, labels = super().private_batch()
        self.recorded = getattr(self, "recorded", []) + [(images.clone(), labels.clone(), torch.get_rng_state())]
        return images, labels


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_first_steps_equal_opacus_privacy_engine_reference_usage(mode):
    """Plain PyTorch + PrivacyEngine.make_private on the same batches and noise draws: the same weights to 1e-6."""
    from opacus import PrivacyEngine

    datamodule = Digits(batch_size=16, pool_limit=64)
    torch.manual_seed(0)
    module = _RecordingDPSGD(
        data_spec=datamodule.spec, noise_multiplier=1.1, max_grad_norm=0.5, lr=0.1, momentum=0.9, grad_sample_mode=mode
    )
    initial = copy.deepcopy(module.network)
    _trainer(limit_train_batches=3).fit(module, datamodule)

    engine = PrivacyEngine(accountant="rdp")
    images, labels = datamodule.pool("train").tensors()
    reference = engine.make_private(
        module=initial,
        optimizer=torch.optim.SGD(initial.parameters(), lr=0.1, momentum=0.9),
        data_loader=DataLoader(TensorDataset(images, labels), batch_size=16),
        noise_multiplier=1.1,
        max_grad_norm=0.5,
        poisson_sampling=True,
        grad_sample_mode=mode,
        **({"criterion": torch.nn.CrossEntropyLoss()} if mode == "ghost" else {}),
    )
    model, optimizer, loader = (
        reference[0],
        reference[1],
        reference[-1],
    )  # ghost: (model, optimizer, criterion, loader)
    assert loader.sample_rate == float(module.dp_sample_rate) == module.private_loader.sample_rate
    for batch_images, batch_labels, rng_state in module.recorded:
        optimizer.zero_grad()
        if mode == "ghost":
            reference[2](model(batch_images), batch_labels).backward()
        else:
            F.cross_entropy(model(batch_images), batch_labels).backward()
        torch.set_rng_state(rng_state)
        optimizer.step()
    assert len(module.recorded) == 3 and any(len(b[0]) for b in module.recorded)
    for ours, theirs in zip(module.network.parameters(), model.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert module.accountant.history == engine.accountant.history == [(1.1, 0.25, 3)]
    assert module.epsilon() == pytest.approx(engine.accountant.get_epsilon(1e-5, alphas=RDP_ORDERS))


def test_epsilon_is_the_step_hooks_accountant_for_the_poisson_sampler_that_ran(tmp_path):
    from opacus.accountants import PRVAccountant, RDPAccountant
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    datamodule = Digits(batch_size=16, pool_limit=64)
    module = DPSGD(data_spec=datamodule.spec, target_epsilon=3.0, delta=1e-4)  # registered: the checkpoint restores it
    sizes, private_batch = [], module.private_batch
    module.private_batch = lambda: (lambda batch: sizes.append(len(batch[0])) or batch)(private_batch())
    evaluation = PrivacyEvaluation(attacks=[], records_dir=str(tmp_path / "records"), leaderboard_dir=None)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    _trainer(max_epochs=3, callbacks=[evaluation, checkpoint], enable_checkpointing=True).fit(module, datamodule)
    assert isinstance(module.private_loader.batch_sampler, UniformWithReplacementSampler)
    assert len(sizes) == 12 and len(set(sizes)) > 1, "Poisson batches vary in size"
    sigma = float(module.dp_noise_multiplier)
    assert module.accountant.history == [(sigma, 0.25, 12)] and int(module.dp_steps) == 12
    assert module.epsilon() == pytest.approx(3.0, rel=0.05)
    report = module.training_report()
    for accountant, key in ((RDPAccountant(), "dp_epsilon"), (PRVAccountant(), "dp_epsilon_prv")):
        accountant.history = [(sigma, 0.25, 12)]
        kwargs = {"alphas": RDP_ORDERS} if key == "dp_epsilon" else {}
        assert report[key] == pytest.approx(accountant.get_epsilon(1e-4, **kwargs))
    assert report["dp_secure_noise"] == 0 and report["dp_replaced_layers"] == 0
    record = load_records([tmp_path / "records"]).records[0]
    assert record["cost"]["dp_epsilon"] == pytest.approx(module.epsilon())
    assert (
        record["method"]["dp"]["secure_noise"] is False
        and "not accounted" in record["method"]["dp"]["tuning_spent_privacy"]
    )
    restored, _, _ = load_checkpoint(checkpoint.best_model_path, device="cpu")
    assert restored.epsilon() == pytest.approx(module.epsilon())
    assert not any(hasattr(p, "grad_sample") for p in module.network.parameters()), "Opacus's hooks leave with the fit"


def test_a_batch_norm_network_trains_with_dp_after_conversion_and_the_record_says_what_was_replaced():
    datamodule = Digits(batch_size=8, pool_limit=32)
    module = DPSGD(data_spec=datamodule.spec, network="mobilenet_v2", noise_multiplier=1.0, lr=0.01)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    assert "1.features.0.1: BatchNorm2d -> GroupNorm" in module.replaced_layers
    before = [p.detach().clone() for p in module.parameters()]
    _trainer(limit_train_batches=2).fit(module, datamodule)
    assert int(module.dp_steps) == 2 and all(torch.isfinite(p).all() for p in module.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert module.training_report()["dp_replaced_layers"] == len(module.replaced_layers) > 0
    assert module.describe()["dp"]["replaced_layers"] == module.replaced_layers


def test_augmentation_is_applied_per_sample_to_the_private_batches():
    datamodule = Digits(batch_size=64, pool_limit=64)
    pool = datamodule.pool("train")
    pool.transform = lambda image: image.flip(-1)  # deterministic, so the test can recompute it
    module = _RecordingDPSGD(data_spec=datamodule.spec, noise_multiplier=1.0)
    _trainer(limit_train_batches=1).fit(module, datamodule)
    images, _, _ = module.recorded[0]
    raw = pool.images.float().div(255)
    flipped = {tuple(image.flatten().tolist()) for image in raw.flip(-1)}
    assert len(images) > 0 and all(tuple(image.flatten().tolist()) in flipped for image in images)


def test_the_only_samples_loaded_in_training_are_the_poisson_batches_and_the_step_count_is_unchanged():
    datamodule = Digits(batch_size=16, pool_limit=96)
    pool = datamodule.pool("train")
    loaded = []
    original = type(pool).__getitems__
    pool.__getitems__ = lambda indices: loaded.append(len(indices)) or original(pool, indices)
    module = _RecordingDPSGD(data_spec=datamodule.spec, noise_multiplier=1.0)
    trainer = _trainer(max_epochs=2)
    trainer.fit(module, datamodule)
    steps_per_epoch = -(-len(pool) // 16)  # Lightning's clock: as many steps as batches of the pool, as before
    assert trainer.num_training_batches == steps_per_epoch and int(module.dp_steps) == 2 * steps_per_epoch
    poisson = [len(images) for images, _, _ in module.recorded]
    probe = 2  # the two members one forward and backward through Opacus's hooks checks before training
    # an empty Poisson batch reads one member for its shape; no Lightning batch is loaded only to be dropped
    assert sum(loaded) == probe + sum(max(size, 1) for size in poisson)


def test_empty_poisson_batches_step_without_failing():
    datamodule = Digits(batch_size=1, pool_limit=64)  # q = 1/64: most batches are empty
    module = _RecordingDPSGD(data_spec=datamodule.spec, noise_multiplier=1.0)
    _trainer(limit_train_batches=8).fit(module, datamodule)
    assert any(len(images) == 0 for images, _, _ in module.recorded) and int(module.dp_steps) == 8
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_an_unreachable_dp_target_fails_with_one_line_before_training():
    datamodule = Digits(batch_size=64, pool_limit=64)
    module = DPSGD(data_spec=datamodule.spec, target_epsilon=1e-6, delta=1e-9)
    module.training_step = lambda *a: pytest.fail("DP-SGD trained")
    with pytest.raises(BenchError, match="cannot reach epsilon"):
        _trainer(max_epochs=50).fit(module, datamodule)


def test_a_network_opacus_cannot_serve_fails_with_one_line_before_training():
    datamodule = Digits(batch_size=8, pool_limit=16)
    module = DPSGD(data_spec=datamodule.spec, network="resnet18", noise_multiplier=1.0)  # `out += identity`
    module.training_step = lambda *a: pytest.fail("DP-SGD trained")
    with pytest.raises(BenchError, match="cannot compute per-sample gradients of 'resnet18'") as error:
        _trainer().fit(module, datamodule)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_is_refused_before_training(precision):
    datamodule = Digits(batch_size=16, pool_limit=32)
    module = DPSGD(data_spec=datamodule.spec, noise_multiplier=1.0)
    module.training_step = lambda *a: pytest.fail("DP-SGD trained")
    try:
        trainer = _trainer(precision=precision)
    except (ValueError, RuntimeError):  # this Lightning refuses the precision on the CPU itself
        pytest.skip(f"{precision} is not available on the CPU")
    with pytest.raises(BenchError, match="full precision"):
        trainer.fit(module, datamodule)


def test_secure_mode_without_torchcsprng_is_one_clear_error():
    pytest.importorskip("opacus")
    try:
        import torchcsprng  # noqa: F401

        pytest.skip("torchcsprng is installed")
    except ImportError:
        pass
    with pytest.raises(BenchError, match="torchcsprng"):
        DPSGD(data_spec=_spec(), noise_multiplier=1.0, secure_mode=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"grad_sample_mode": "ew"},
        {"max_grad_norm": 0.0},
        {"noise_multiplier": -1.0},
        {"target_epsilon": None},
        {"momentum": 1.0},
    ],
)
def test_bad_settings_fail_with_a_clear_message(kwargs):
    with pytest.raises(BenchError):
        DPSGD(data_spec=_spec(), **kwargs)


# ---------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_ddp_ranks_end_with_equal_weights_under_noise(tmp_path):
    from test_ddp import _ReportRanks

    datamodule = Digits(batch_size=8, pool_limit=32)
    module = DPSGD(data_spec=datamodule.spec, noise_multiplier=1.0, lr=0.1)
    before = torch.cat([p.detach().flatten() for p in module.parameters()])
    trainer = _trainer(
        devices=2,
        strategy="ddp_spawn",
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[_ReportRanks(str(tmp_path))],
    )
    trainer.fit(module, datamodule)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    assert max(report["max_weight_difference"] for report in reports) == 0.0
    assert (
        float(module.dp_sample_rate) == 0.5 and int(module.dp_steps) == 2
    )  # 2 ranks x 8 of 32 members, 2 batches a rank
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in module.parameters()]))


# ---------------------------------------------------------------------------- the leaderboard's reference
def test_dominates_needs_at_least_the_accuracy_and_the_privacy_on_every_shared_metric():
    from bench.leaderboard.dpsgd import dominates

    defense = (0.90, {"attack_accuracy": (0.60, "lower"), "empirical_epsilon": (1.0, "lower")})
    assert dominates((0.90, {"attack_accuracy": (0.60, "lower"), "empirical_epsilon": (0.5, "lower")}), defense)
    assert not dominates((0.89, {"attack_accuracy": (0.50, "lower")}), defense)  # less accurate
    assert not dominates((0.95, {"attack_accuracy": (0.61, "lower")}), defense)  # less private
    assert not dominates((0.95, {"canary_auc": (0.5, "lower")}), defense)  # nothing to compare on


@pytest.mark.parametrize("dp_accuracy, expected", [(0.8, "no"), (0.99, "yes")])
def test_the_leaderboard_marks_each_defense_dominated_by_dp_sgd_or_not(tmp_path, dp_accuracy, expected):
    import csv
    import shutil
    from pathlib import Path

    from bench.leaderboard import generate_leaderboard

    records = tmp_path / "records"
    records.mkdir()
    fixtures = Path(__file__).parent / "fixtures" / "records"
    for name in ("mia-dpsgd.json", "mia-none-seed0.json", "mia-pruning.json"):
        shutil.copy(fixtures / name, records / name)
    dp = json.loads((records / "mia-dpsgd.json").read_text())
    dp["utility"]["accuracy"] = dp_accuracy  # 0.99 and its 0.52 worst-case attack accuracy: better on both axes
    (records / "mia-dpsgd.json").write_text(json.dumps(dp))
    generate_leaderboard([records], tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "leaderboard.csv").open()))
    verdicts = {row["method"]: row["dominated_by_dpsgd"] for row in rows}
    assert verdicts["MCMIA (defense=none)"] == verdicts["MCMIA (defense=pruning)"] == expected
    assert verdicts["DP-SGD (target_epsilon=3.0)"] == ""
