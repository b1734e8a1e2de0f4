"""Shadow training against its floor: K LeNet-5 shadows on 28x28 inputs, batched vs sequential vs one plain step.

Three ways to do the same K x steps training steps of batch B, measured side by side in one run
(alternating, medians of ``--repeats``):

* batched:    :class:`ShadowModels` with ``vectorize=True`` (K parameter sets stacked, one ``vmap``
              forward and backward, one optimizer step per batch for all K);
* sequential: the same copies one after the other in one loop of the same process (no per-model
              setup: the copies, optimizers and data are built once);
* floor:      one plain LeNet-5, one forward + backward + step over K x B inputs per batch: the
              same arithmetic without per-model bookkeeping (what batching can at best approach).

Ratios printed: batched / floor (target on the CPU: <= 1.3) and sequential / batched (>= 1).

    OMP_NUM_THREADS=1 python benchmarks/shadow_training.py [--shadows 8 16] [--steps 20] [--batch_size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench.attacks.shadow_models import ShadowModels
from bench.datamodules.base import DataSpec
from bench.modules import MCMIA

SPEC = DataSpec("mnist_sized", (1, 28, 28), 10, (0.1307,), (0.3081,))


def timed_shadows(count: int, steps: int, batch: int, vectorize: bool, images, labels) -> float:
    module = MCMIA(data_spec=SPEC, network="lenet5", defense="none")
    shadows = ShadowModels(module, count, torch.Generator().manual_seed(0), torch.device("cpu"), vectorize=vectorize)
    members = torch.zeros(count, len(images), dtype=torch.bool)
    members[:, : steps * batch] = True  # every copy: `steps` batches of `batch` per epoch
    started = time.perf_counter()
    shadows.fit(images, labels, members, epochs=1, batch_size=batch, generator=torch.Generator().manual_seed(1))
    return time.perf_counter() - started


def timed_floor(count: int, steps: int, batch: int, images, labels) -> float:
    network = MCMIA(data_spec=SPEC, network="lenet5", defense="none").network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    x = images[: count * batch]
    y = labels[: count * batch]
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shadows", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    size = max(args.steps * args.batch_size, max(args.shadows) * args.batch_size)
    images, labels = torch.rand(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator)
    print(f"LeNet-5 on 28x28, {args.steps} steps of batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
          f"medians of {args.repeats}")
    for count in args.shadows:
        times: dict[str, list[float]] = {"batched": [], "sequential": [], "floor": []}
        timed_shadows(count, 2, args.batch_size, True, images, labels)  # warm-up (vmap's first trace)
        for _ in range(args.repeats):
            times["batched"].append(timed_shadows(count, args.steps, args.batch_size, True, images, labels))
            times["sequential"].append(timed_shadows(count, args.steps, args.batch_size, False, images, labels))
            times["floor"].append(timed_floor(count, args.steps, args.batch_size, images, labels))
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"K={count:>2}: batched {median['batched']:.3f} s | sequential {median['sequential']:.3f} s | "
              f"floor {median['floor']:.3f} s | batched/floor {median['batched'] / median['floor']:.2f}x | "
              f"sequential/batched {median['sequential'] / median['batched']:.2f}x")


if __name__ == "__main__":
    main()
