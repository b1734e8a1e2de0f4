"""Shadow training against its floor: K LeNet-5 shadows on 28x28 inputs, batched vs sequential vs one plain step.

The same K x steps training steps of batch B (cross-entropy, Adam), measured side by side in one
process and one thread setting, every way warmed up first, then alternated ``--repeats`` times
(medians):

* batched:    :class:`ShadowModels` with ``vectorize=True``, the copies as ONE grouped network
              (grouped convolutions, batched matrix products: bench/batching/grouped_networks.py),
              one forward, backward and optimizer step per batch for all K;
* vmap:       the same with ``grouped=False``: ``functional_call`` under ``vmap`` (the fallback for
              networks without a grouped form);
* sequential: the same copies one after the other in one loop of the same process (no per-model
              setup: the copies, optimizers and data are built once; the fallback for recipes that
              cannot be batched);
* floor:      one plain LeNet-5, one forward + backward + step over K x B inputs per batch (the same
              arithmetic without per-model bookkeeping, and without gathering each step's batch),
              the faster of its contiguous and channels-last forms.

Each shadow run times only ``fit`` (building the copies is not in it). Ratios printed: batched /
floor (target on the CPU: <= 1.3) and sequential / batched (>= 1: batched never slower).

    OMP_NUM_THREADS=1 python benchmarks/shadow_training.py [--shadows 8 16] [--steps 20] [--batch_size 32] [--repeats 5]
        [--device cuda]   (on a GPU the target is batched >= 5x faster than sequential)
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_shadows(
    count: int, steps: int, batch: int, images, labels, device: torch.device, vectorize: bool, grouped: bool = True
) -> float:
    module = MCMIA(data_spec=SPEC, network="lenet5", defense="none")
    shadows = ShadowModels(
        module, count, torch.Generator().manual_seed(0), device, vectorize=vectorize, grouped=grouped
    )
    assert shadows.batching == ("sequential" if not vectorize else "grouped" if grouped else "vmap"), shadows.batching
    members = torch.zeros(count, len(images), dtype=torch.bool)
    members[:, : steps * batch] = True  # every copy: `steps` batches of `batch` per epoch
    _synchronize(device)
    started = time.perf_counter()
    shadows.fit(images, labels, members, epochs=1, batch_size=batch, generator=torch.Generator().manual_seed(1))
    _synchronize(device)
    return time.perf_counter() - started


def timed_floor(count: int, steps: int, batch: int, images, labels, device: torch.device, channels_last: bool) -> float:
    network = MCMIA(data_spec=SPEC, network="lenet5", defense="none").network.train().to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    x, y = images[: count * batch].to(device), labels[: count * batch].to(device)
    if channels_last:
        network, x = network.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shadows", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    size = max(args.steps * args.batch_size, max(args.shadows) * args.batch_size)
    images, labels = (
        torch.rand(size, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (size,), generator=generator),
    )
    print(
        f"LeNet-5 on 28x28 on {device}, {args.steps} steps of batch {args.batch_size}, "
        f"{torch.get_num_threads()} thread(s), "
        f"medians of {args.repeats}"
    )
    for count in args.shadows:
        ways = {
            "batched": lambda steps: timed_shadows(count, steps, args.batch_size, images, labels, device, True),
            "vmap": lambda steps: timed_shadows(
                count, steps, args.batch_size, images, labels, device, True, grouped=False
            ),
            "sequential": lambda steps: timed_shadows(count, steps, args.batch_size, images, labels, device, False),
            "floor": lambda steps: timed_floor(count, steps, args.batch_size, images, labels, device, False),
            "floor_cl": lambda steps: timed_floor(count, steps, args.batch_size, images, labels, device, True),
        }
        for way in ways.values():  # warm-up: oneDNN's kernel choice, vmap's first trace, allocator
            way(2)
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                times[name].append(way(args.steps))
        median = {name: statistics.median(values) for name, values in times.items()}
        floor = min(median["floor"], median["floor_cl"])
        print(
            f"K={count:>2}: batched {median['batched']:.3f} s | vmap {median['vmap']:.3f} s | sequential "
            f"{median['sequential']:.3f} s | floor {floor:.3f} s (contiguous {median['floor']:.3f}, channels-last "
            f"{median['floor_cl']:.3f}) | batched/floor {median['batched'] / floor:.2f}x | vmap/floor "
            f"{median['vmap'] / floor:.2f}x | sequential/batched {median['sequential'] / median['batched']:.2f}x"
        )


if __name__ == "__main__":
    main()
