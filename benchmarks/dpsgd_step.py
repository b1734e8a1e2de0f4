"""One DP-SGD step, side by side: Opacus's hooks, functorch and ghost clipping, and bench's old hand-written step.

The same step (cross-entropy of a batch, per-sample clipping to C, Gaussian noise, division by the
expected batch size, SGD with momentum) on the same network and batch, measured in one process and
one thread setting, every path warmed up first, then alternated ``--repeats`` times (medians):

* hooks:        Opacus's ``GradSampleHooks`` + ``DPOptimizer`` (``DPSGD``'s default, ``grad_sample_mode: hooks``);
* functorch:    the same with per-sample gradients from ``torch.func`` inside Opacus (``grad_sample_mode: functorch``);
* ghost:        ghost clipping, per-sample gradient norms then a re-weighted second backward
                (``GradSampleHooksFastGradientClipping`` + ``DPOptimizerFastGradientClipping``,
                ``grad_sample_mode: ghost``);
* hand-written: bench's step before issue 25, ``vmap(grad(...))`` over ``functional_call``, clipping,
                noise and the division by hand (kept here only as the reference it was measured against).

    OMP_NUM_THREADS=1 python benchmarks/dpsgd_step.py [--network lenet5] [--batch_size 64 256] [--steps 10]
        [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from bench.datamodules.base import DataSpec
from bench.modules.dpsgd import private_network

SPECS = {
    "lenet5": DataSpec("mnist_sized", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "cnn4": DataSpec("cifar_sized", (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3),
    "mobilenet_v2": DataSpec("cifar_sized", (3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3),
}
NOISE, CLIP, LR = 1.0, 1.0, 0.05


def opacus_step(network, mode: str, batch_size: int):
    """A step function of Opacus's pieces as DPSGD puts them together."""
    from opacus.grad_sample.utils import prepare_module
    from opacus.optimizers import get_optimizer_class
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    ghost = {"max_grad_norm": CLIP, "use_ghost_clipping": True} if mode == "ghost" else {}
    hooks = prepare_module(network, mode, False, batch_first=True, loss_reduction="mean", **ghost)
    optimizer = get_optimizer_class("flat", False, mode)(
        torch.optim.SGD(network.parameters(), lr=LR, momentum=0.9),
        noise_multiplier=NOISE,
        max_grad_norm=CLIP,
        expected_batch_size=batch_size,
        loss_reduction="mean",
    )
    criterion = (
        DPLossFastGradientClipping(hooks, optimizer, torch.nn.CrossEntropyLoss(), "mean") if mode == "ghost" else None
    )

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        logits = network(images)
        (criterion(logits, labels) if criterion is not None else F.cross_entropy(logits, labels)).backward()
        optimizer.step()

    return step


def hand_written_step(network, batch_size: int):
    """bench's step before issue 25 (bench/modules/mcmia.py's DPSGD): torch.func per-sample gradients, by hand."""
    optimizer = torch.optim.SGD(network.parameters(), lr=LR, momentum=0.9)
    buffers = dict(network.named_buffers())

    def loss(params, image, label):
        return F.cross_entropy(functional_call(network, (params, buffers), (image.unsqueeze(0),)), label.unsqueeze(0))

    def step(images, labels):
        params = {name: p.detach() for name, p in network.named_parameters()}
        gradients = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
        norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gradients.values()))
        clip = (CLIP / (norms + 1e-6)).clamp(max=1.0)
        optimizer.zero_grad(set_to_none=True)
        for name, parameter in network.named_parameters():
            summed = torch.einsum("n,n...->...", clip, gradients[name])
            noised = summed + torch.normal(0.0, NOISE * CLIP, size=summed.shape, device=summed.device)
            parameter.grad = (noised / batch_size).view_as(parameter)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="lenet5", choices=sorted(SPECS))
    parser.add_argument("--batch_size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device, spec = torch.device(args.device), SPECS[args.network]
    print(
        f"{args.network}, {args.steps} steps, median of {args.repeats}, device {device}, "
        f"{torch.get_num_threads()} threads: ms per step"
    )
    print(f"{'batch':>6} {'hooks':>9} {'functorch':>10} {'ghost':>9} {'hand-written':>13}")
    for batch_size in args.batch_size:
        images = torch.rand(batch_size, *spec.image_shape, device=device)
        labels = torch.randint(0, spec.num_classes, (batch_size,), device=device)
        steps = {}
        for name in ("hooks", "functorch", "ghost", "hand-written"):
            torch.manual_seed(0)
            network = private_network(args.network, spec)[0].to(device)
            steps[name] = (
                opacus_step(network, name, batch_size)
                if name != "hand-written"
                else hand_written_step(network, batch_size)
            )
        times = {name: [] for name in steps}
        for name, step in steps.items():  # warm-up
            step(images, labels)
        for _ in range(args.repeats):
            for name, step in steps.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(images, labels)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
        median = {name: statistics.median(values) for name, values in times.items()}
        print(
            f"{batch_size:>6} {median['hooks']:>9.2f} {median['functorch']:>10.2f} {median['ghost']:>9.2f} "
            f"{median['hand-written']:>13.2f}"
        )


if __name__ == "__main__":
    main()
