"""Speed of ATS's scores: torch.func-vectorized vs the per-image, per-point loop, side by side.

Both versions score the same policy on the same model and images (and agree within 1e-5, which the
script checks); each is timed several times, alternating, and the median is reported.

    python benchmarks/ats_scores.py [--network convnet] [--width 16] [--size 28] [--images 16] [--points 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.ats.scores import accuracy_score, accuracy_score_loop, privacy_score, privacy_score_loop
from bench.datamodules.base import DataSpec
from bench.networks.ats import build_ats_network
from bench.transforms import parse_policy


def timed(function, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="convnet", choices=["convnet", "resnet20"])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=28, help="image height and width (1 channel)")
    parser.add_argument("--images", type=int, default=16, help="images S_pri averages over")
    parser.add_argument("--points", type=int, default=10, help="interpolation points K")
    parser.add_argument("--batch", type=int, default=64, help="S_acc mini-batch size")
    parser.add_argument("--rounds", type=int, default=2, help="S_acc rounds")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    spec = DataSpec("synthetic", (1, args.size, args.size), 10, (0.5,), (0.25,))
    torch.manual_seed(0)
    model = build_ats_network(args.network, spec, args.width).eval()
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(args.images, 1, args.size, args.size, generator=generator), torch.randint(10, (args.images,), generator=generator)
    batches = torch.rand(args.rounds, args.batch, 1, args.size, args.size, generator=generator)
    policy = parse_policy("3-1-7+43-18-18")
    print(f"{args.network} (width {args.width}) on {args.size}x{args.size} images, policy {policy}, "
          f"torch threads {torch.get_num_threads()}")

    def pri(score):
        return lambda: score(model, policy, images, labels, args.points, generator=torch.Generator().manual_seed(1))

    def acc(score):
        return lambda: score(model, policy, batches, torch.Generator().manual_seed(1))

    pri(privacy_score)(), pri(privacy_score_loop)()  # warm-up
    for name, vectorized, loop, work in [
        ("S_pri", pri(privacy_score), pri(privacy_score_loop), f"{args.images} images x {args.points + 1} gradients"),
        ("S_acc", acc(accuracy_score), acc(accuracy_score_loop), f"{args.rounds} rounds x {args.batch} Jacobian rows"),
    ]:
        fast, fast_value = timed(vectorized, args.repeats)
        slow, slow_value = timed(loop, args.repeats)
        agree = abs(fast_value - slow_value) <= 1e-5 * max(1.0, abs(slow_value))
        print(f"{name} ({work}): vectorized {fast * 1e3:8.1f} ms | loop {slow * 1e3:8.1f} ms | speed-up x{slow / fast:5.2f} "
              f"| values {fast_value:.6f} vs {slow_value:.6f} ({'agree' if agree else 'DIFFER'})")


if __name__ == "__main__":
    main()
