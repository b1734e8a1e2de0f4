"""Clean exit of a DDP worker, for bench's methods and for any module trained with bench's callbacks."""

from __future__ import annotations

import atexit
import functools

import torch


def destroy_process_group_at_exit() -> None:
    """Under DDP, destroy the default process group before the interpreter exits, whatever the backend (registered
    once per process; nothing to do outside DDP).

    Lightning does this for NCCL only; a gloo group left to the interpreter's teardown can abort a DDP worker at
    exit ("terminate called without an active exception", SIGABRT) after a successful fit, which fails the run.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _register_destroy()


@functools.cache
def _register_destroy() -> None:
    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)
