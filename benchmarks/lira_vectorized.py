"""LiRA's shadow models: trained together (vmap over stacked parameters) vs one model at a time.

Both sides build the same shadow models (same initial weights), train them on the same random
halves of the attacker pool in the same mini-batch order with the same optimizer settings, then
score the same queries. Runs alternate (vectorized, sequential, vectorized, ...) so that machine
noise hits both alike; the medians and their ratio are printed, and the largest difference
between the two sides' logits (they compute the same thing).

    OMP_NUM_THREADS=1 python benchmarks/lira_vectorized.py [--shadows 8] [--epochs 5] [--repeats 3]
        [--data digits|mnist_shared] [--network lenet5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.attacks.membership_inference import logit_confidence
from bench.attacks.shadow_models import ShadowModels, random_halves
from bench.datamodules import Digits, LocalFolder
from bench.modules import MCMIA

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"


def run(
    module, images, labels, queries, query_labels, shadows: int, epochs: int, batch_size: int, vectorize: bool
) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    models = ShadowModels(module, shadows, torch.Generator().manual_seed(0), torch.device("cpu"), vectorize=vectorize)
    members = random_halves(shadows, len(images), torch.Generator().manual_seed(1))
    models.fit(images, labels, members, epochs, batch_size, torch.Generator().manual_seed(2))
    confidences = logit_confidence(models.logits(queries), query_labels.expand(shadows, -1))
    return time.perf_counter() - started, confidences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shadows", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", choices=["digits", "mnist_shared"], default="digits")
    parser.add_argument("--network", default="lenet5")
    args = parser.parse_args()

    if args.data == "mnist_shared":
        datamodule = LocalFolder(
            data_dir=str(SHARED_MNIST),
            name="mnist_t10k",
            fractions={"train": 0.02, "val": 0.1, "test": 0.82, "nonmember": 0.02, "attacker": 0.04},
        )
    else:
        datamodule = Digits()
    module = MCMIA(data_spec=datamodule.spec, network=args.network, defense="none")
    images, labels = datamodule.pool("attacker").tensors()
    queries, query_labels = datamodule.pool("nonmember").tensors()
    print(
        f"{args.shadows} shadow {args.network}s, {args.epochs} epochs on halves of {len(images)} {args.data} images, "
        f"{len(queries)} queries, {torch.get_num_threads()} thread(s)"
    )

    times: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, torch.Tensor] = {}
    for _ in range(args.repeats):
        for vectorize in (True, False):
            seconds, outputs[vectorize] = run(
                module, images, labels, queries, query_labels, args.shadows, args.epochs, args.batch_size, vectorize
            )
            times[vectorize].append(seconds)
    vectorized, sequential = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"vectorized (vmap over stacked parameters): {vectorized:.2f} s  "
        f"(runs: {', '.join(f'{t:.2f}' for t in times[True])})"
    )
    print(
        f"one model at a time:                       {sequential:.2f} s  "
        f"(runs: {', '.join(f'{t:.2f}' for t in times[False])})"
    )
    print(f"speed-up (sequential / vectorized): {sequential / vectorized:.2f}x")
    print(
        f"largest difference in LiRA's confidences between the two: {(outputs[True] - outputs[False]).abs().max():.2e}"
    )


if __name__ == "__main__":
    main()
