"""Which points of a sweep may start now on one node, and on which GPUs: pure functions, no processes.

A node has ``jobs`` slots. With GPUs, each GPU holds up to ``per_gpu`` points at once and a point that
asks for ``trainer.devices = d`` takes d slots on d different GPUs (DDP wants one process per GPU);
on a CPU machine the slots have no GPU (``None``) and a d-device point (DDP over gloo) takes d of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from bench.errors import BenchError

Gpu = Optional[str]  # a CUDA device id as CUDA_VISIBLE_DEVICES names it, or None for a CPU slot


@dataclass
class Capacity:
    """What a node can still take: free points per GPU (key None: the CPU) and free slots in all."""

    free: dict[Gpu, int]
    budget: int


def node_capacity(jobs: Optional[int], gpus: Sequence[str], per_gpu: int = 1) -> Capacity:
    """The capacity of an idle node: ``jobs`` slots (default: one per GPU and ``per_gpu``, else 1)."""
    if per_gpu < 1:
        raise BenchError(f"--per_gpu must be at least 1, not {per_gpu}")
    if len(set(gpus)) != len(gpus):
        raise BenchError(f"--gpus lists a GPU twice: {','.join(gpus)}")
    most = len(gpus) * per_gpu if gpus else None
    jobs = jobs if jobs is not None else (most or 1)
    if jobs < 1:
        raise BenchError(f"--jobs must be at least 1, not {jobs}")
    if most is not None and jobs > most:
        raise BenchError(
            f"--jobs {jobs} is more than {len(gpus)} GPU(s) x --per_gpu {per_gpu} = {most} slots; "
            "raise --per_gpu to share GPUs"
        )
    return Capacity({gpu: per_gpu for gpu in gpus} if gpus else {None: jobs}, jobs)


def fits_ever(devices: int, capacity: Capacity) -> bool:
    """Whether a point of ``devices`` devices can run on this node at all (when it is idle)."""
    return assign(devices, capacity) is not None


def assign(devices: int, capacity: Capacity) -> Optional[list[Gpu]]:
    """The slots a ``devices``-device point takes now, or None if it must wait.

    GPUs with the most free room first (ties: in the order given), so points spread over the GPUs
    before any GPU takes a second one.
    """
    if devices < 1 or devices > capacity.budget:
        return None
    if list(capacity.free) == [None]:
        return [None] * devices if capacity.free[None] >= devices else None
    order = sorted(
        (gpu for gpu, room in capacity.free.items() if room > 0), key=lambda gpu: -capacity.free[gpu]
    )  # sorted() is stable: ties keep the given order
    return order[:devices] if len(order) >= devices else None


def take(slots: Sequence[Gpu], capacity: Capacity) -> None:
    for gpu in slots:
        capacity.free[gpu] -= 1
    capacity.budget -= len(slots)


def release(slots: Sequence[Gpu], capacity: Capacity) -> None:
    for gpu in slots:
        capacity.free[gpu] += 1
    capacity.budget += len(slots)


def next_start(waiting: Sequence[int], capacity: Capacity) -> Optional[tuple[int, list[Gpu]]]:
    """The first waiting point (by its device count, in sweep order) that fits now, and its slots.

    First fit: a big point that must wait does not hold back smaller ones behind it; the grid is finite,
    so the big one starts at the latest when the small ones are done.
    """
    for position, devices in enumerate(waiting):
        slots = assign(devices, capacity)
        if slots is not None:
            return position, slots
    return None
