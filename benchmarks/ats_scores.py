"""Speed of ATS's privacy score S_pri (and S_acc) against the authors' loop and against the floor, side by side.

For each network (the 8-layer ConvNet and ResNet-20 on 28x28 one-channel images) and each thread count
(1 and 2), on the same model, policy, images and starts:

* loop: the authors' computation (``benchmark/search_transform_attack.py: reconstruct``), batch 1, one
  backward per interpolation point (``privacy_score_loop``);
* vectorized: ``privacy_score`` as the search runs it (``per_sample="statistics"``): one batched forward and
  backward over all (K + 1) x D inputs, each layer's per-sample weight gradients formed a chunk at a time as the
  backward reaches it (convolutions by grouped convolution backward) and reduced at once to their dot products
  with the target's gradient and their squared norms (``bench.batching.per_sample.gradient_statistics``);
* vmap: ``privacy_score(per_sample="vmap")``, ``torch.func.vmap(grad)``;
* unfold (``--unfold``): ``privacy_score(per_sample="unfold")``, every per-sample gradient by unfold + batched
  matmul;
* floor: one plain batched forward + backward over the same (K + 1) x D inputs (summed weight gradients, no
  per-sample gradients, no cosines): no implementation of S_pri can be faster.

All score the already transformed images (the policy's own cost is the same for all and not part of the
score). Times are medians of alternating repeats (``--clock cpu``: CPU time, steadier when other jobs load the
machine); every value must agree with the loop's within 1e-5 (the last column: the largest difference).
In float32 the batched computations round differently from the batch-1 loop (oneDNN picks other
kernels), and where an activation sits within rounding of a ReLU's kink the gradient jumps: on 2
images one point's cosine moved by 3e-4 that way, 8e-6 on S_pri, identically for every batched method;
``--dtype float64`` shows the agreement without it. ``--variant paper`` times Eq. 7 as printed instead of the
authors' computation.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/ats_scores.py [--width 16] [--resnet_width 8] [--images 8]
        [--points 20] [--threads 1 2] [--repeats 3] [--variant reference] [--unfold] [--clock wall] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.ats.scores import (
    accuracy_score,
    accuracy_score_loop,
    interpolation_points,
    interpolation_steps,
    privacy_score,
    privacy_score_loop,
)
from bench.ats.search import keep_freed_memory
from bench.datamodules.base import DataSpec
from bench.networks.registry import Role, build_network
from bench.transforms import parse_policy

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(functions: dict, repeats: int, clock=time.perf_counter) -> dict:
    """name -> (median seconds over ``repeats`` runs, the last run's value); the functions alternate."""
    times = {name: [] for name in functions}
    values = {}
    for _ in range(repeats):
        for name, function in functions.items():
            started = clock()
            values[name] = function()
            times[name].append(clock() - started)
    return {name: (statistics.median(times[name]), values[name]) for name in functions}


def floor(model, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """One plain batched forward + backward over the inputs: parameter gradients summed over the batch."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), labels, reduction="sum").backward()
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16, help="ConvNet width")
    parser.add_argument("--resnet_width", type=int, default=8, help="ResNet-20 width")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--images", type=int, default=8, help="images S_pri averages over")
    parser.add_argument("--points", type=int, default=20, help="interpolation intervals K (the reference's 20)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", nargs="+", default=["convnet", "resnet20"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", default="reference", choices=["reference", "paper"])
    parser.add_argument("--unfold", action="store_true", help="also time per_sample='unfold'")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="wall: elapsed time; cpu: this process's CPU time (user + system, page faults included), "
        "steadier than wall time on a machine other jobs load (run at one thread)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64"],
        help="float64: the values' agreement without float32's rounding (see the docstring)",
    )
    parser.add_argument(
        "--allocator",
        default="system",
        choices=["system", "heap"],
        help="heap: glibc keeps freed memory (bench.ats.search's default, keep_freed_memory)",
    )
    args = parser.parse_args()
    if args.allocator == "heap" and not keep_freed_memory():
        raise SystemExit("--allocator heap needs glibc")

    spec = DataSpec("synthetic", (1, args.size, args.size), 10, (0.5,), (0.25,))
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    clock = CLOCKS[args.clock]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 1, args.size, args.size, generator=generator).to(device, dtype)
    labels = torch.randint(10, (args.images,), generator=generator).to(device)
    starts = torch.rand(images.shape, generator=generator).to(device, dtype)
    rounds = torch.rand(10, 10, 1, args.size, args.size, generator=generator).to(
        device, dtype
    )  # 10 rounds, one image per class
    policy = parse_policy("3-1-7+43-18-18")
    steps, _ = interpolation_steps(args.points, args.variant)
    targets = policy(images, torch.Generator().manual_seed(1))
    floor_inputs = torch.cat([interpolation_points(starts, targets, args.points, args.variant).flatten(0, 1), targets])
    floor_labels = torch.cat([labels.repeat_interleave(len(steps)), labels])
    print(
        f"S_pri ({args.variant}): {args.images} images x {len(steps) + 1} gradients "
        f"({len(steps)} points + the target), "
        f"policy {policy}, {args.size}x{args.size}, device {device}, {args.dtype}, {args.clock} time"
    )
    others = ["vmap"] + (["unfold"] if args.unfold else [])
    print(
        "| network | threads | loop (ms) | vectorized (ms) | "
        + " | ".join(f"{o} (ms)" for o in others)
        + " | floor (ms) "
        "| loop / vectorized | vectorized / floor | "
        + " | ".join(f"{o} / floor" for o in others)
        + " | max |value - loop| |"
    )
    print("|" + " --- |" * (9 + 2 * len(others)))

    def build(network: str):
        width = args.width if network == "convnet" else args.resnet_width
        torch.manual_seed(0)
        return build_network(network, Role.COLLABORATIVE, spec, width=width).to(device, dtype).eval(), width

    for network in args.networks:
        model, width = build(network)
        for threads in args.threads:
            torch.set_num_threads(threads)

            def score(function, **kwargs):  # on the transformed images: the policy's cost is not the score's
                return lambda: float(
                    function(model, None, targets, labels, args.points, starts=starts, variant=args.variant, **kwargs)
                )

            functions = {
                "loop": score(privacy_score_loop),
                "vectorized": score(privacy_score),
                **{o: score(privacy_score, per_sample=o) for o in others},
                "floor": lambda: floor(model, floor_inputs, floor_labels),
            }
            for function in functions.values():  # warm-up
                function()
            result = timed(functions, args.repeats, clock)
            loop, loop_value = result["loop"]
            fast, bare = result["vectorized"][0], result["floor"][0]
            error = max(abs(result[k][1] - loop_value) for k in ["vectorized", *others])
            print(
                f"| {network} (width {width}) | {threads} | {loop * 1e3:.1f} | {fast * 1e3:.1f} | "
                + "".join(f"{result[o][0] * 1e3:.1f} | " for o in others)
                + f"{bare * 1e3:.1f} | {loop / fast:.2f}x | {fast / bare:.2f}x | "
                + "".join(f"{result[o][0] / bare:.2f}x | " for o in others)
                + f"{error:.1e} |",
                flush=True,
            )
    print("\nS_acc (10 rounds x 10 Jacobian rows): vectorized vs loop")
    for network in args.networks:
        model, width = build(network)
        for threads in args.threads:
            torch.set_num_threads(threads)
            result = timed(
                {
                    "vectorized": lambda: float(
                        accuracy_score(model, policy, rounds, torch.Generator().manual_seed(1))
                    ),
                    "loop": lambda: float(accuracy_score_loop(model, policy, rounds, torch.Generator().manual_seed(1))),
                },
                args.repeats,
                clock,
            )
            (fast, fast_value), (slow, slow_value) = result["vectorized"], result["loop"]
            print(
                f"  {network} (width {width}), {threads} thread(s): vectorized {fast * 1e3:.1f} ms "
                f"| loop {slow * 1e3:.1f} ms | x{slow / fast:.2f} | S_acc {fast_value:.4f} vs {slow_value:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
