"""Speed of batched Inverting Gradients against attacks one after another and against the floor, side by side.

On one untrained ConvNet (28x28, one channel) and A targets (batch size 1 each; A = 8 and 32), for the same
number of iterations:

* sequential: bench's attack run A times, one target each (``GradientInversion.invert``);
* batched: one ``invert`` of all A targets (the harness's way): the attacks as copies of one grouped network
  (``per_sample="grouped"``, the default: grouped convolutions, each copy's weight gradient one attack's);
* batched (vmap): the same with ``per_sample="vmap"`` (``torch.func.vmap`` over per-attack gradients);
* batched (unfold): the same with ``per_sample="unfold"`` (unfold + batched matmul; off with --no_unfold);
* floor: per iteration one plain batched double backward over the A images (forward, parameter gradient
  with ``create_graph``, a dot product with a fixed vector, backward to the images), no per-attack
  gradients: no batched attack can be faster;
* and for one target: bench's attack against a plain single-attack loop (autograd.grad with create_graph,
  cosine + TV, signed Adam, boxed: what inversefed does each iteration).

Agreement: the largest pixel difference between batched and sequential reconstructions (and vmap's), and between
bench's single attack and the plain loop (same start, same steps). Signed steps make a float32 rounding difference
in one gradient entry's sign a different step, so reconstructions from different kernels may differ in a few
pixels; the median pixel difference says how many.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/ats_inversion.py [--attacks 8 32] [--iterations 50]
        [--width 16] [--threads 1 2] [--repeats 1] [--clock wall] [--no_unfold] [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from ats_scores import CLOCKS, timed  # this folder: run as python benchmarks/ats_inversion.py

from bench.attacks import GradientInversion
from bench.attacks.gradient_inversion import total_variation
from bench.datamodules.base import DataSpec
from bench.modules import Collaborative


def floor(model, images: torch.Tensor, labels: torch.Tensor, iterations: int) -> None:
    """A plain batched double backward per iteration over all attacks' images together (the second backward to the
    images only, as the attacks take it)."""
    x = images.flatten(0, 1).clone().requires_grad_(True)
    y = labels.flatten()
    parameters = [p for p in model.parameters()]
    direction = [torch.randn_like(p) for p in parameters]
    optimizer = torch.optim.Adam([x], lr=0.1)
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        gradients = torch.autograd.grad(F.cross_entropy(model(x), y), parameters, create_graph=True)
        (x.grad,) = torch.autograd.grad(sum((g * d).sum() for g, d in zip(gradients, direction)), x)  # x's only
        optimizer.step()


def plain_single(
    model,
    target: list[torch.Tensor],
    label: torch.Tensor,
    start: torch.Tensor,
    mean,
    std,
    iterations: int,
    milestones: list[int],
) -> torch.Tensor:
    """One attack as a plain loop: inversefed's iteration (cosine over all layers + 1e-4 TV, signed Adam, boxed)."""
    z = ((start - mean) / std).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    parameters = [p for p in model.parameters()]
    low, high = (0 - mean) / std, (1 - mean) / std
    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        gradients = torch.autograd.grad(F.cross_entropy(model(z * std + mean), label), parameters, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(gradients, target))
        norms = sum(g.square().sum() for g in gradients).sqrt() * sum(t.square().sum() for t in target).sqrt()
        cost = 1 - dot / norms + 1e-4 * total_variation(z.unsqueeze(0)).sum()
        cost.backward()
        z.grad.sign_()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            z.copy_(torch.max(torch.min(z, high), low))
    return (z.detach() * std + mean).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attacks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each; the median is printed")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="wall: elapsed time; cpu: this process's CPU time, steadier on a loaded machine (1 thread)",
    )
    parser.add_argument("--no_unfold", action="store_true", help="skip the per_sample='unfold' column")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    device = torch.device(args.device)

    spec = DataSpec("synthetic", (1, args.size, args.size), 10, (0.1307,), (0.3081,))
    torch.manual_seed(0)
    module = Collaborative(network="convnet", width=args.width, data_spec=spec).to(device).eval()
    model = module.network
    most = max(args.attacks)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(most, 1, 1, args.size, args.size, generator=generator).to(device)
    labels = torch.randint(10, (most, 1), generator=generator).to(device)
    shared = module.shared_gradients(images, labels)
    targets = {n: g.detach() for n, g in shared.gradients.items()}
    attack = GradientInversion(iterations=args.iterations, progress=False).set_normalization(spec)
    unfolded = GradientInversion(iterations=args.iterations, per_sample="unfold", progress=False).set_normalization(
        spec
    )
    vmapped = GradientInversion(iterations=args.iterations, per_sample="vmap", progress=False).set_normalization(spec)
    starts = attack.initial_images(most, (1, args.size, args.size), torch.Generator().manual_seed(1)).to(device)
    print(
        f"Inverting Gradients, ConvNet width {args.width}, {args.size}x{args.size}, {args.iterations} iterations, "
        f"device {device}, {args.clock} time, median of {args.repeats}"
    )

    def synced(value):  # CUDA runs asynchronously: a time is only a time once the device is done
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return value

    def invert(which: slice, on=attack):
        return synced(on.invert(module, {n: t[which] for n, t in targets.items()}, labels[which], starts[which])[0])

    print(
        "| threads | attacks | sequential (s) | batched (s) | batched, vmap (s) | batched, unfold (s) | floor (s) | "
        "sequential / batched | batched / floor | vmap / floor | pixel difference batched vs sequential: max, median "
        "| vmap vs sequential: max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for threads, count in [(t, c) for t in args.threads for c in args.attacks]:
        torch.set_num_threads(threads)
        functions = {
            "sequential": lambda: torch.cat([invert(slice(i, i + 1)) for i in range(count)]),
            "batched": lambda: invert(slice(0, count)),
            "vmap": lambda: invert(slice(0, count), vmapped),
            "unfold": lambda: invert(slice(0, count), unfolded),
            "floor": lambda: synced(floor(model, starts[:count], labels[:count], args.iterations)),
        }
        if args.no_unfold:
            del functions["unfold"]
        result = timed(functions, args.repeats, clock)
        (sequential_time, sequential), (batched_time, batched) = result["sequential"], result["batched"]
        unfold_time = result["unfold"][0] if "unfold" in result else float("nan")
        floor_time = result["floor"][0]
        vmap_time, vmap_images = result["vmap"]
        difference = (batched - sequential).abs()
        print(
            f"| {threads} | {count} | {sequential_time:.2f} | {batched_time:.2f} | {vmap_time:.2f} | "
            f"{unfold_time:.2f} | "
            f"{floor_time:.2f} | {sequential_time / batched_time:.2f}x | {batched_time / floor_time:.2f}x | "
            f"{vmap_time / floor_time:.2f}x | {difference.max().item():.1e}, {difference.median().item():.1e} | "
            f"{(vmap_images - sequential).abs().max().item():.1e} |",
            flush=True,
        )

    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    target = [targets[n][0] for n, _ in module.named_parameters()]
    from bench.attacks.gradient_inversion import inversefed_milestones

    print()
    for threads in args.threads:
        torch.set_num_threads(threads)
        single = timed(
            {
                "bench": lambda: invert(slice(0, 1)),
                "plain": lambda: synced(
                    plain_single(
                        model,
                        target,
                        labels[0],
                        starts[0],
                        mean,
                        std,
                        args.iterations,
                        inversefed_milestones(args.iterations),
                    )
                ),
            },
            args.repeats,
            clock,
        )
        (ours_time, ours), (plain_time, plain) = single["bench"], single["plain"]
        print(
            f"one attack, {threads} thread(s): bench {ours_time:.2f} s | plain single-attack loop {plain_time:.2f} s | "
            f"plain / bench {plain_time / ours_time:.2f}x | "
            f"max pixel difference {(ours[0] - plain).abs().max().item():.1e}"
        )


if __name__ == "__main__":
    main()
