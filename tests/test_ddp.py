"""Two CPU processes (gloo, ddp_spawn): synced metrics, one record, the same numbers as one process."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from bench.attacks import FeatureInversion
from bench.callbacks import PrivacyEvaluation
from bench.cli import load_checkpoint
from bench.datamodules import Digits
from bench.harness import evaluate
from bench.modules import SplitNetwork
from bench.records import load_records


class _ReportRanks(Callback):
    """Writes, from every rank, a checksum of its weights and (rank 0) the synced validation accuracy."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer, pl_module) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
        dist.all_gather(gathered, flat)
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "max_weight_difference": max((g - flat).abs().max().item() for g in gathered),
            "val_accuracy": trainer.callback_metrics["val/accuracy"].item(),
        }
        Path(self.directory, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_ddp_spawn_two_processes(tmp_path):
    datamodule = Digits(batch_size=32)
    module = SplitNetwork(data_spec=datamodule.spec)
    records = tmp_path / "records"
    attack = FeatureInversion(epochs=2, progress=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        default_root_dir=tmp_path,
        callbacks=[
            _ReportRanks(str(tmp_path)),
            PrivacyEvaluation(attacks=[attack], records_dir=str(records), leaderboard_dir=None),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule)

    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["world_size"] == 2 for report in reports)
    # gradients are averaged every step: both ranks end with the same weights
    assert max(report["max_weight_difference"] for report in reports) == 0.0
    # the attacks and the record ran once, on rank 0
    loaded = load_records([records])
    assert loaded.problems == [] and len(loaded.records) == 1
    record = loaded.records[0]

    # the harness's numbers do not depend on the world size: re-evaluating the checkpoint on one process agrees
    restored, restored_data, _ = load_checkpoint(trainer.checkpoint_callback.best_model_path, device="cpu")
    single = evaluate(restored, restored_data, [FeatureInversion(epochs=2, progress=False)], seed=0)
    assert single.utility["accuracy"] == pytest.approx(record["utility"]["accuracy"], abs=1e-6)
    for key, value in single.privacy[0]["metrics"].items():
        # equal up to float reassociation: DDP workers run with fewer intra-op threads
        assert value == pytest.approx(record["privacy"][0]["metrics"][key], rel=1e-3, abs=1e-6)

    # validation accuracy was reduced over both ranks' shards: it is the accuracy on the whole pool
    # (up to the one sample DistributedSampler repeats to even the shards)
    restored.eval()
    images, labels = restored_data.pool("val").tensors()
    with torch.no_grad():
        whole_pool = (restored(images).argmax(1) == labels).float().mean().item()
    assert reports[0]["val_accuracy"] == pytest.approx(whole_pool, abs=1.0 / len(labels) + 1e-6)
