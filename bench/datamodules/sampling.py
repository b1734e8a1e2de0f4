"""Shuffling that a resumed run reproduces: orders drawn from (seed, epoch) alone, and resumable batch streams.

A ``RandomSampler`` draws each epoch's order from the global RNG, whose state at the start of an epoch
depends on everything the run did before; a run resumed from a checkpoint gets another order. Here the
order of epoch e is a function of (seed, e) only, so the straight run and the resumed one see the
same batches. Lightning calls ``set_epoch`` on the training sampler every epoch (as for
``DistributedSampler``, which replaces it under DDP and is seeded the same way).
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler


def mixed_seed(*keys: int) -> int:
    """One seed from several integers (NumPy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence([int(key) % 2**64 for key in keys]).generate_state(1, np.uint64)[0])


def seeded_order(size: int, *keys: int) -> Tensor:
    """A permutation of ``range(size)`` determined by ``keys`` alone."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(mixed_seed(*keys)))


class SeededShuffle(Sampler[int]):
    """A random order of the dataset per epoch, from (seed, epoch) alone.

    Args:
        size: the dataset's length.
        seed: default ``torch.initial_seed()`` when built, which ``seed_everything`` sets: the run's seed.
    """

    def __init__(self, size: int, seed: Optional[int] = None) -> None:
        self.size = size
        self.seed = torch.initial_seed() if seed is None else seed
        #: the DataLoader's generator (its workers' base seed): a resumed fit iterates its loader at another time
        #: than the straight run did, so drawing that seed from the global RNG would shift every draw after it
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(mixed_seed(self.seed, epoch, 1))

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(seeded_order(self.size, self.seed, self.epoch).tolist())


class BatchStream:
    """Endless mini-batches of one pool, pass after pass in :class:`SeededShuffle` orders, resumable by position.

    For methods that draw extra batches beside the training loader (e.g. Min-Max's member and reference
    batches): its :meth:`state_dict` is saved in checkpoints, so a resumed run continues exactly where the
    straight run was. Batches are indexed from the in-memory pool (no DataLoader, hence no draw from the
    global RNG per pass).
    """

    def __init__(self, pool, batch_size: int, seed: Optional[int] = None, name: str = "") -> None:
        self.pool = pool
        self.batch_size = batch_size
        self.seed = torch.initial_seed() if seed is None else seed
        self.salt = zlib.crc32(name.encode())  # two streams of one run draw different orders
        self.passes = 0
        self.position = 0  # batches already served in this pass
        self._order: Optional[Tensor] = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.position * self.batch_size >= len(self.pool):
            self.passes, self.position, self._order = self.passes + 1, 0, None
        if self._order is None:
            self._order = seeded_order(len(self.pool), self.seed, self.salt, self.passes)
        start = self.position * self.batch_size
        self.position += 1
        return self.pool.__getitems__(self._order[start : start + self.batch_size].tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "passes": self.passes, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.passes, self.position = int(state["seed"]), int(state["passes"]), int(state["position"])
        self._order = None
