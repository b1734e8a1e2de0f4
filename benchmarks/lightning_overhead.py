"""How much does Lightning cost? One training epoch of the DNN baseline, Lightning vs a plain loop.

Both sides train the same network from the same initial weights on the same DataLoader with
the same optimizer; epochs alternate (plain, Lightning, plain, ...) so that machine noise hits
both alike, and the ratio of the medians is printed (target: at most 1.10). The script then runs
the quickstart (`bench fit` with no arguments) in a subprocess and prints its wall time and
peak memory.

    python benchmarks/lightning_overhead.py [--data mnist_shared|digits] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from bench.datamodules import Digits, LocalFolder
from bench.modules import SplitNetwork

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.started


def plain_epoch(module: SplitNetwork, loader) -> float:
    optimizer = torch.optim.Adam(module.parameters(), lr=module.hparams.lr)
    module.train()
    started = time.perf_counter()
    for images, labels in loader:
        loss = F.cross_entropy(module(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def lightning_epoch(module: SplitNetwork, datamodule) -> float:
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule)
    return timer.seconds


def quickstart_cost() -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of `bench fit` with no arguments, in a fresh folder."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bench.cli", "fit", "--trainer.enable_progress_bar", "false"],
            cwd=folder,
            check=True,
            capture_output=True,
            env={**os.environ, "WANDB_SILENT": "true"},
        )
        wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux reports KiB
    return wall, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", choices=["mnist_shared", "digits"], default="mnist_shared" if SHARED_MNIST.exists() else "digits"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128, help="128: the batch size of the MNIST configs")
    parser.add_argument("--skip_quickstart", action="store_true")
    args = parser.parse_args()

    if args.data == "mnist_shared":
        datamodule = LocalFolder(data_dir=str(SHARED_MNIST), batch_size=args.batch_size)
    else:
        datamodule = Digits(batch_size=args.batch_size)
    datamodule.setup()
    torch.manual_seed(0)
    initial = SplitNetwork(data_spec=datamodule.spec)
    loader = datamodule.train_dataloader()
    lightning_epoch(copy.deepcopy(initial), datamodule)  # warm-up: imports, allocator, first-call overheads
    plain_epoch(copy.deepcopy(initial), loader)

    plain, lightning = [], []
    for _ in range(args.repeats):
        plain.append(plain_epoch(copy.deepcopy(initial), loader))
        lightning.append(lightning_epoch(copy.deepcopy(initial), datamodule))
    steps = len(loader)
    print(
        f"data: {args.data}, {len(datamodule.pool('train'))} training images, {steps} steps of {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.repeats} epochs each"
    )
    print(f"plain PyTorch epoch: median {statistics.median(plain):.3f} s  ({', '.join(f'{t:.3f}' for t in plain)})")
    print(
        f"Lightning epoch:     median {statistics.median(lightning):.3f} s  "
        f"({', '.join(f'{t:.3f}' for t in lightning)})"
    )
    print(f"ratio Lightning / plain: {statistics.median(lightning) / statistics.median(plain):.3f} (target <= 1.10)")
    if not args.skip_quickstart:
        wall, peak = quickstart_cost()
        print(f"quickstart `bench fit`: {wall:.1f} s wall, peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
