"""The ADMM pruning callback: exact projection, the W/Z/U updates, masks through retraining and resume, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.errors import BenchError
from bench.networks.pruning import apply_mask, effective_weight, restore_pruning
from bench.training.admm_pruning import ADMMPruning, keep_count, project_cardinality


class TinyNet(L.LightningModule):
    """A plain LightningModule (not a bench method): the callback must work with any module."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3)
        )

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def on_load_checkpoint(self, checkpoint):
        restore_pruning(self, checkpoint["state_dict"])


def _loader(n: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator))
    return DataLoader(data, batch_size=16, shuffle=False)


def _trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    return L.Trainer(callbacks=callbacks, **{**options, **kwargs})


LAYERS = ("body.0", "body.3", "body.5")


def _nonzero(module, name) -> int:
    return int(torch.count_nonzero(effective_weight(module.get_submodule(name))))


# ---------------------------------------------------------------------------- projection (Eq. 19)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_projection_keeps_exactly_the_requested_number_of_largest_weights(sparsity):
    weight = torch.randn(7, 5, 3, 3)
    keep = keep_count(weight.numel(), sparsity)
    projected = project_cardinality(weight, keep)
    assert int(torch.count_nonzero(projected)) == keep
    kept = projected != 0
    assert torch.equal(projected[kept], weight[kept]), "kept weights are unchanged"
    if 0 < keep < weight.numel():  # the kept magnitudes all exceed the dropped ones: the Euclidean projection
        assert weight[kept].abs().min() >= weight[~kept].abs().max()


def test_projection_with_ties_still_keeps_exactly_n():
    weight = torch.ones(10)
    assert int(torch.count_nonzero(project_cardinality(weight, 3))) == 3


def test_z_and_u_updates_follow_eq_17_and_19():
    module = TinyNet()
    admm = ADMMPruning(sparsity=0.75, interval="step", admm_updates=100)
    admm._layers = admm.layers(module)
    admm.Z = {n: torch.zeros_like(layer.weight) for n, layer in admm._layers.items()}
    admm.U = {n: torch.randn_like(layer.weight) for n, layer in admm._layers.items()}
    before = {n: u.clone() for n, u in admm.U.items()}
    rho = admm.rho
    admm.update()
    for name, layer in admm._layers.items():
        w = layer.weight.detach()
        expected_z = project_cardinality(w + before[name], keep_count(w.numel(), 0.75))
        torch.testing.assert_close(admm.Z[name], expected_z)  # Eq. 19
        torch.testing.assert_close(admm.U[name], before[name] + w - expected_z)  # Eq. 17
    assert admm.rho == pytest.approx(rho * 1.3), "rho grows by rho_multiplier after each update"


def test_the_augmented_lagrangian_gradient_equals_adding_the_term_to_the_loss():
    torch.manual_seed(0)
    module = TinyNet()
    admm = ADMMPruning(sparsity=0.5, rho=0.3)
    admm._layers = admm.layers(module)
    admm.Z = {n: torch.randn_like(layer.weight) for n, layer in admm._layers.items()}
    admm.U = {n: torch.randn_like(layer.weight) for n, layer in admm._layers.items()}
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)

    penalty = sum(0.3 / 2 * (layer.weight - admm.Z[n] + admm.U[n]).square().sum() for n, layer in admm._layers.items())
    (F.cross_entropy(module(x), y) + penalty).backward()
    expected = {n: layer.weight.grad.clone() for n, layer in admm._layers.items()}
    module.zero_grad()
    F.cross_entropy(module(x), y).backward()
    admm.on_before_optimizer_step(None, module, optimizer)
    for name, layer in admm._layers.items():
        torch.testing.assert_close(layer.weight.grad, expected[name])


# ---------------------------------------------------------------------------- pruning and retraining
def test_hard_pruning_hits_every_layer_target_and_masks_stay_zero_through_retraining(tmp_path):
    sparsity = {"body.0": 0.5, "body.3": 0.9, "body.5": 0.75}
    admm = ADMMPruning(sparsity=sparsity, interval="step", update_every=2, admm_updates=3)
    module = TinyNet()
    trainer = _trainer(tmp_path, [admm], max_epochs=4)  # 16 steps: pruned after 6, 10 steps of masked retraining
    trainer.fit(module, _loader())
    assert admm.phase == "retrain" and admm.updates == 3
    report = admm.report(module)
    for name, fraction in sparsity.items():
        layer = module.get_submodule(name)
        assert _nonzero(module, name) == keep_count(layer.weight_mask.numel(), fraction)
        assert report[f"sparsity/{name}"] == pytest.approx(
            1 - keep_count(layer.weight_mask.numel(), fraction) / layer.weight_mask.numel()
        )
        # the masked entries of the trained weight are exactly zero, and the layer computes with them
        assert torch.all(layer.weight[layer.weight_mask == 0] == 0)
    assert report["pruned_layer_compression"] == pytest.approx(
        report["pruned_layer_weights"] / report["pruned_layer_nonzero"]
    )


def _energy_outside_constraint(module, sparsity) -> float:
    """||W - Pi_S(W)||^2 / ||W||^2 over the layers: what hard pruning would throw away."""
    weights = [module.get_submodule(n).weight.detach() for n in LAYERS]
    outside = sum((w - project_cardinality(w, keep_count(w.numel(), sparsity))).square().sum() for w in weights)
    return float(outside / sum(w.square().sum() for w in weights))


def test_admm_drives_the_weights_towards_the_constraint_set(tmp_path):
    torch.manual_seed(0)
    plain, regularised = TinyNet(), TinyNet()
    regularised.load_state_dict(plain.state_dict())
    _trainer(tmp_path, [], max_epochs=10).fit(plain, _loader())
    # several W-steps per Z/U update: Adam moves W a bounded distance per step, so Z must not run ahead of it
    admm = ADMMPruning(
        sparsity=0.8, interval="step", update_every=8, rho=0.1, rho_multiplier=1.5, rho_max=10.0, admm_updates=1000
    )
    _trainer(tmp_path, [admm], max_epochs=10).fit(regularised, _loader())
    assert admm.phase == "admm" and admm.updates == 5
    # same data, same start: ADMM concentrates the weights on the n_i entries it will keep
    assert _energy_outside_constraint(regularised, 0.8) < 0.5 * _energy_outside_constraint(plain, 0.8)


def test_pruning_only_the_named_submodule(tmp_path):
    admm = ADMMPruning(sparsity=0.5, submodule="body.3", admm_updates=0)
    module = TinyNet()
    _trainer(tmp_path, [admm]).fit(module, _loader())
    assert hasattr(module.body[3], "weight_mask")
    assert not hasattr(module.body[0], "weight_mask") and not hasattr(module.body[5], "weight_mask")


@pytest.mark.parametrize(
    "kwargs", [{"sparsity": 1.0}, {"sparsity": {"nope": 0.5}}, {"rho": 0.0}, {"interval": "batch"}]
)
def test_bad_settings_fail_with_a_clear_message(kwargs):
    with pytest.raises(BenchError):
        admm = ADMMPruning(**kwargs)
        admm.layers(TinyNet())


# ---------------------------------------------------------------------------- checkpoints
def test_admm_state_survives_checkpoint_and_resume(tmp_path):
    admm = ADMMPruning(sparsity=0.8, interval="step", admm_updates=50)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module = TinyNet()
    _trainer(tmp_path, [admm, checkpoint], max_epochs=2, enable_checkpointing=True).fit(module, _loader())
    saved = admm.state_dict()
    assert saved["updates"] == 8 and saved["phase"] == "admm"

    resumed_admm = ADMMPruning(sparsity=0.8, interval="step", admm_updates=50)
    resumed = TinyNet()
    trainer = _trainer(tmp_path, [resumed_admm], max_epochs=2)
    trainer.fit(resumed, _loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # nothing left to train
    assert resumed_admm.rho == pytest.approx(saved["rho"]) and resumed_admm.ticks == saved["ticks"]
    for name in LAYERS:
        torch.testing.assert_close(resumed_admm.Z[name], saved["Z"][name], rtol=0, atol=0)
        torch.testing.assert_close(resumed_admm.U[name], saved["U"][name], rtol=0, atol=0)


def test_masks_survive_resume_and_retraining_keeps_them_zero(tmp_path):
    admm = ADMMPruning(sparsity=0.9, interval="step", admm_updates=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module = TinyNet()
    _trainer(tmp_path, [admm, checkpoint], max_epochs=1, enable_checkpointing=True).fit(module, _loader())
    assert admm.phase == "retrain"
    masks = {n: module.get_submodule(n).weight_mask.clone() for n in LAYERS}

    resumed_admm = ADMMPruning(sparsity=0.9, interval="step", admm_updates=2)
    resumed = TinyNet()
    # the optimizer's state is restored by position: the resumed module must list its parameters in the same order
    _trainer(tmp_path, [resumed_admm], max_epochs=3).fit(
        resumed, _loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert resumed_admm.phase == "retrain"
    for name in LAYERS:
        layer = resumed.get_submodule(name)
        assert torch.equal(layer.weight_mask, masks[name])
        assert _nonzero(resumed, name) == int(masks[name].sum())
        assert torch.all(effective_weight(layer)[masks[name] == 0] == 0)


def test_apply_mask_keeps_the_parameter_order():
    layer = nn.Linear(3, 2)
    apply_mask(layer, torch.ones(2, 3))
    assert list(layer._parameters) == ["weight_orig", "bias"]


# ---------------------------------------------------------------------------- DDP
class _ReportMasks(Callback):
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        admm = next(c for c in trainer.callbacks if isinstance(c, ADMMPruning))
        flat = torch.cat(
            [
                torch.cat(
                    [
                        pl_module.get_submodule(n).weight_mask.flatten(),
                        effective_weight(pl_module.get_submodule(n)).flatten(),
                    ]
                )
                for n in LAYERS
            ]
        )
        gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
        dist.all_gather(gathered, flat)
        report = {
            "phase": admm.phase,
            "world_size": trainer.world_size,
            "max_difference": max((g - flat).abs().max().item() for g in gathered),
        }
        Path(self.directory, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class _ShardedNet(TinyNet):
    def train_dataloader(self):
        return _loader(128)


@pytest.mark.slow
def test_ddp_ranks_hold_identical_masks_and_weights(tmp_path):
    admm = ADMMPruning(sparsity=0.8, interval="step", admm_updates=2)
    trainer = _trainer(tmp_path, [admm, _ReportMasks(str(tmp_path))], devices=2, strategy="ddp_spawn", max_epochs=2)
    trainer.fit(_ShardedNet())
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["world_size"] == 2 and r["phase"] == "retrain" for r in reports)
    assert max(r["max_difference"] for r in reports) == 0.0
