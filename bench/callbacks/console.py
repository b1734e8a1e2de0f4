"""What `bench fit` prints: one line per epoch where a progress bar cannot redraw, and the run's config per run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback


class EpochLines(Callback):
    """One line per training epoch (its metrics and time), instead of a progress bar in a non-interactive log.

    A progress bar redraws with carriage returns; written to a file or a CI log, every redraw is a line
    (the quickstart's log was 1,300 lines).
    """

    #: reports on training, takes no part in it: shadow models trained by the target's recipe leave it out
    part_of_training_recipe = False

    def __init__(self) -> None:
        self._started: Optional[float] = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {key: value for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        shown = ", ".join(f"{key} {float(value):.4g}" for key, value in sorted(metrics.items()))
        seconds = time.perf_counter() - self._started if self._started is not None else float("nan")
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(
            f"bench: epoch {trainer.current_epoch + 1}{total}: {shown or 'no metrics logged'} ({seconds:.1f} s)",
            flush=True,
        )


def run_directory(trainer: L.Trainer) -> Path:
    """The run's own folder, as the checkpoints are placed: <save_dir>/<name>/<version> of the first logger."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is not None and logger.save_dir is not None and logger.version is not None:
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(logger.save_dir) / str(logger.name) / version
    return Path(trainer.default_root_dir)


class RunConfig(SaveConfigCallback):
    """LightningCLI's config.yaml, saved in the run's own folder (beside ``checkpoints/``).

    It is not overwritten by the next run.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        directory = trainer.strategy.broadcast(str(run_directory(trainer)))
        if trainer.is_global_zero:
            os.makedirs(directory, exist_ok=True)
            self.parser.save(
                self.config,
                os.path.join(directory, self.config_filename),
                skip_none=False,
                overwrite=True,
                multifile=self.multifile,
            )
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)
