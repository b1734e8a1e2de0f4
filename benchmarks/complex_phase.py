"""Side-by-side timings for the complex-valued networks: how much the vectorized paths save.

1. Phase estimation: D' scoring a chunk of samples once per angle of the grid (``estimate_phase``),
   against one batch of every (angle, sample) pair, the features repeated grid times.
2. Max-pooling by modulus: the first tied unit found by a max over position weights, against an argmax
   over the tie mask.

    OMP_NUM_THREADS=1 python benchmarks/complex_phase.py
"""

from __future__ import annotations

import math
import time

import torch

from bench.attacks.phase_inversion import estimate_phase, phase_critic
from bench.networks.complex import ComplexMaxPool2d, real_part_at


def best_of(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def phase_grid(samples: int = 512, grid: int = 36, shape=(6, 28, 28)) -> None:
    torch.manual_seed(0)
    critic = phase_critic(shape).eval()
    released = torch.randn(samples, *shape, dtype=torch.complex64)
    angles = torch.arange(grid) * (2 * math.pi / grid)

    def all_pairs(chunk: int = 4096):
        estimates = []
        for start in range(0, samples, chunk // grid):
            x = released[start : start + chunk // grid]
            candidates = real_part_at(x.repeat(grid, 1, 1, 1), angles.repeat_interleave(len(x)))
            estimates.append(angles[critic(candidates).view(grid, len(x)).argmax(0)])
        return torch.cat(estimates)

    torch.testing.assert_close(estimate_phase(critic, released, grid), all_pairs())
    per_angle, pairs = best_of(lambda: estimate_phase(critic, released, grid), 3), best_of(all_pairs, 3)
    print(
        f"phase grid ({samples} features {shape}, {grid} angles): all pairs in one batch {pairs * 1e3:.0f} ms, "
        f"one batch per angle {per_angle * 1e3:.0f} ms, ratio {pairs / per_angle:.2f}"
    )


@torch.no_grad()
def max_pool(shape=(64, 16, 28, 28)) -> None:
    torch.manual_seed(0)
    f = torch.randn(*shape, dtype=torch.complex64)
    pool = ComplexMaxPool2d(2)
    n, c, h, w = shape

    def argmax_of_mask():
        windows = lambda t: torch.nn.functional.unfold(t, 2, stride=2).view(n, c, 4, -1)  # noqa: E731
        modulus = windows(f.abs())
        tied = modulus >= modulus.amax(2, keepdim=True) * (1 - pool.tolerance)
        first = tied.int().argmax(2, keepdim=True)
        return torch.complex(windows(f.real).gather(2, first), windows(f.imag).gather(2, first)).view(
            n, c, h // 2, w // 2
        )

    torch.testing.assert_close(pool(f), argmax_of_mask(), atol=0, rtol=0)
    weighted, argmax = best_of(lambda: pool(f)), best_of(argmax_of_mask)
    print(
        f"max-pool by modulus ({shape}): argmax of the tie mask {argmax * 1e3:.1f} ms, "
        f"max over position weights {weighted * 1e3:.1f} ms, ratio {argmax / weighted:.2f}"
    )


if __name__ == "__main__":
    phase_grid()
    max_pool()
