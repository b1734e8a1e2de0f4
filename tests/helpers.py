"""Helpers shared by the method tests: a synthetic data spec, a quiet trainer, an update-schedule recorder."""

from __future__ import annotations

import atexit
import shutil
import tempfile

import lightning as L
import torch

from bench.datamodules import DataSpec


def synthetic_spec(shape=(1, 8, 8), classes=10) -> DataSpec:
    """A data spec for images of ``shape`` (C, H, W) without a dataset behind it."""
    return DataSpec("synthetic", shape, classes, (0.5,) * shape[0], (0.25,) * shape[0])


#: every test trainer's root folder lies under this one, removed when the test session ends
_TRAINER_ROOTS = tempfile.mkdtemp(prefix="bench-test-trainers-")
atexit.register(shutil.rmtree, _TRAINER_ROOTS, ignore_errors=True)


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU trainer for tiny fits: one epoch, no logger, checkpoints, bars or validation unless asked."""
    options = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_val_batches=0,
        # never the working directory (the repository): the shadow cache and any logs go to a fresh folder
        default_root_dir=tempfile.mkdtemp(dir=_TRAINER_ROOTS),
    )
    return L.Trainer(**{**options, **kwargs})


class StepRecorder:
    """Records, for every optimizer step, its name and which of ``recorded_parts`` changed their weights.

    For methods whose optimizer steps all go through ``manual_step(optimizer, loss, name)`` (RAN, MCMIA's
    Min-Max, ComplexNet): ``class _Recording(StepRecorder, RAN): recorded_parts = ("encoder", ...)``
    (a leading underscore keeps such test classes out of the registry).
    """

    recorded_parts: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[str, frozenset[str]]] = []

    def manual_step(self, optimizer, loss, name, log=None):
        parts = {part: getattr(self, part) for part in self.recorded_parts}
        before = {part: [p.detach().clone() for p in net.parameters()] for part, net in parts.items()}
        super().manual_step(optimizer, loss, name, log)
        changed = frozenset(
            part
            for part, net in parts.items()
            if any(not torch.equal(a, b) for a, b in zip(before[part], net.parameters()))
        )
        self.steps.append((name, changed))


def run_bench(args, capsys) -> tuple[int, str]:
    """``bench ARGS`` in this process: (exit code, everything printed)."""
    from bench.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err
