"""The learned attacker's training recipe: the old one (constant Adam rate) against the new one, side by side.

Trains the DNN of ``dnn/mnist_shared`` (SplitNetwork, LeNet-5, lr 0.002, 15 epochs) on the real MNIST test set
(``../shared/datasets/mnist`` relative to the repository root; without it, the embedded digits), queries its
release on the attacker pool, then fits the feature-inversion decoders (default: mirror; upsampling, at ~6 s an
epoch on a busy 2-core CPU against mirror's 0.3-0.4 s, adds about ten minutes) to their validation plateau with
each recipe, from the same generator state (the same validation split, the same initial weights), and prints per
decoder and recipe: epochs run, best epoch, wall seconds, seconds per epoch, the loop's seconds per epoch over a
plain Adam epoch of the same decoder and batches (``floor x``: what validation, early stopping and the schedule
add), the best validation MSE, the final learning rate, and each recipe's ratios to the first one (epochs, wall,
MSE).

    OMP_NUM_THREADS=1 python benchmarks/attacker_recipe.py [--decoders mirror upsampling] [--target_epochs 15]
        [--recipes constant:0.001:64::20 default plateau:0.02:64::20] [--seed 0] [--target_cache /tmp/dnn.pt]

A recipe is ``schedule:lr:batch_size:lr_patience:patience:cycle_epochs`` (trailing fields may be left out); an
empty field, or the whole recipe ``default``, takes
:class:`~bench.attacks.FeatureInversion`'s default. The default recipes: the old one (``constant:0.001:64::20``,
the reference of the ratios) and today's defaults. ``--target_cache``: a state file for the trained DNN (read if it
exists, else written), to measure again without training again. One thread is faster for models this small on a
small or busy CPU. Run from the repository root, with ``PYTHONPATH`` at the checkout to measure.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.attacks import FeatureInversion
from bench.attacks.feature_inversion import clear_fitted_decoders, query_client
from bench.datamodules import Digits, LocalFolder
from bench.modules import SplitNetwork

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


def datamodule_and_name():
    if (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        return LocalFolder(data_dir=str(SHARED_MNIST), name="mnist_t10k", batch_size=64), "MNIST test set (IDX)"
    return Digits(), "embedded digits"


def trained_target(datamodule, epochs: int, cache: Optional[Path]) -> SplitNetwork:
    """The DNN of dnn/mnist_shared, trained with Lightning (or loaded from ``cache``, written after training)."""
    import lightning as L

    L.seed_everything(0, verbose=False)
    module = SplitNetwork(data_spec=datamodule.spec, lr=0.002)
    if cache is not None and cache.exists():
        module.load_state_dict(torch.load(cache, weights_only=True))
        return module.eval()
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    print(f"target: {epochs} epochs in {time.perf_counter() - started:.1f} s")
    if cache is not None:
        torch.save(module.state_dict(), cache)
    return module.eval()


#: the old recipe (constant Adam rate 1e-3, batch 64, patience 20: the reference of the ratios) and today's defaults
DEFAULT_RECIPES = ["constant:0.001:64::20", "default"]


def parse_recipe(text: str) -> dict:
    """``schedule:lr:batch_size:lr_patience:patience:cycle_epochs`` (empty fields, or ``default``: FeatureInversion's
    defaults)."""
    fields = ("schedule", "lr", "batch_size", "lr_patience", "patience", "cycle_epochs")
    kinds = (str, float, int, int, int, int)
    parts = [] if text == "default" else text.split(":")
    kwargs = {name: kind(part) for name, kind, part in zip(fields, kinds, parts) if part}
    return {"name": text, "kwargs": kwargs}


def plain_epoch_seconds(decoder: nn.Module, released: Tensor, images: Tensor, train: int, batch_size: int) -> float:
    """One epoch of a plain Adam loop over ``train`` samples (no validation, no early stopping, no schedule): the
    per-epoch floor; the better of two timed epochs after a warm-up."""
    model = copy.deepcopy(decoder).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:train]

    def epoch() -> None:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            value = F.mse_loss(model(released[batch]), images[batch])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()

    epoch()
    times = []
    for _ in range(2):
        started = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - started)
    return min(times)


def fit(module, released, images, decoder: str, recipe: dict, seed: int) -> dict:
    clear_fitted_decoders()
    attack = FeatureInversion(decoder=decoder, progress=False, **recipe["kwargs"])
    started = time.perf_counter()
    trained, used, report = attack.train_decoder(module, released, images, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - started
    floor = plain_epoch_seconds(trained, released, images, report.train_samples, attack.batch_size)
    cycle = f" c{attack.cycle_epochs}" if attack.schedule == "onecycle" else ""
    name = f"{attack.schedule} lr {attack.lr:g} b{attack.batch_size} p{attack.patience}{cycle}"
    return {"decoder": used, "recipe": name, "seconds": seconds, "report": report, "floor": floor}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoders", nargs="+", default=["mirror"])
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--target_epochs", type=int, default=15)
    parser.add_argument("--target_cache", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    datamodule, data_name = datamodule_and_name()
    datamodule.setup("fit")
    module = trained_target(datamodule, args.target_epochs, args.target_cache)
    images, _ = datamodule.pool("attacker").tensors()
    released = query_client(module.release, images, 256, torch.device("cpu"))
    print(
        f"{data_name}: {len(images)} attacker images, release {tuple(released.shape[1:])}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    recipes = [parse_recipe(text) for text in args.recipes]
    header = (
        f"{'decoder':<11} {'recipe':<28} {'epochs':>6} {'best':>5} {'wall s':>8} {'s/epoch':>8} "
        f"{'floor x':>7} {'val MSE':>10} {'lr end':>9} {'epochs x':>8} {'wall x':>7} {'MSE x':>7}"
    )
    print(header)
    for decoder in args.decoders:
        reference = None
        for recipe in recipes:
            row = fit(module, released, images, decoder, recipe, args.seed)
            report = row["report"]
            ratios = ""
            if reference is None:
                reference = row
            else:
                first = reference["report"]
                ratios = (
                    f"{report.epochs_run / first.epochs_run:>8.2f} {row['seconds'] / reference['seconds']:>7.2f} "
                    f"{report.validation_loss / first.validation_loss:>7.3f}"
                )
            flag = "" if report.converged else " (hit max)"
            print(
                f"{row['decoder']:<11} {row['recipe']:<28} {report.epochs_run:>6} "
                f"{report.best_epoch:>5} {row['seconds']:>8.1f} {row['seconds'] / report.epochs_run:>8.3f} "
                f"{row['seconds'] / report.epochs_run / row['floor']:>7.2f} "
                f"{report.validation_loss:>10.5f} {report.lr_end:>9.2e} {ratios}{flag}",
                flush=True,
            )


if __name__ == "__main__":
    main()
