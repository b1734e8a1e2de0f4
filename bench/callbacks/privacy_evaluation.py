"""Run the evaluation when training ends: a thin adapter that hands the trained module to the :class:`Evaluator`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from bench.attacks.base import Attack
from bench.datamodules.base import PrivacyDataModule
from bench.errors import BenchError
from bench.evaluator import (
    Evaluator,
    Outcome,
    fallback_config,
    run_facts_from_trainer,
    training_progress,
)
from bench.evaluator import chance_level as _chance_level  # noqa: F401 (its old name and place)
from bench.modules.base import PrivacyModule
from bench.records import DEFAULT_LEADERBOARD_DIR, DEFAULT_RECORDS_DIR

#: ``--evaluation.shadow_cache``'s default: a folder beside the run (see :meth:`PrivacyEvaluation.shadow_cache_dir`)
AUTO_SHADOW_CACHE = "auto"


class PrivacyEvaluation(Callback):
    """At the end of ``fit``: hand the trained method to the :class:`~bench.evaluator.Evaluator` (evaluate, write
    its result record, log); outside ``bench fit``, also refresh the leaderboard and print the summary.

    Under DDP only global rank 0 evaluates, on the whole test and attacker pools, so the
    numbers do not depend on the number of devices and nothing is written twice.

    Args:
        attacks: attacks to run (default: every registered attack); each runs only if its threat
            model is one the method declares.
        seed: the harness's seed (attack initialisation and sampling).
        records_dir: where result records are written (default: your own results folder, ``runs/leaderboard/records``;
            ``leaderboard/records`` adds to the leaderboard shipped with the suite).
        leaderboard_dir: where ``bench leaderboard`` output is regenerated (None: don't).
        paper: the paper's reported numbers for this setting, e.g. ``{accuracy: 0.99, source: "Table 1"}``.
        enabled: turn the evaluation off (e.g. for hyper-parameter searches).
        experiment: the leaderboard experiment this run belongs to (rows of one experiment share a table
            and a plot); None: the leaderboard derives one from dataset, pools, attacks and training budget.
        allow_untrained: evaluate and record a model that took no optimizer step (``max_epochs: 0``, an untrained
            checkpoint), e.g. as an untrained reference; refused otherwise, since it is not a result.
        budget_check: rerun every learned attack at twice its training budget and record the relative
            change of its primary metric (``details["budget_check"]``; doubles the attacks' time).
        shadow_cache: a folder where the membership attacks' shadow pools, and in its ``decoders`` folder the
            reconstruction attacks' fitted decoders, are kept for a rerun, a sweep over attack settings of the same
            target configuration, or another method with the same release to load instead of training them again;
            an entry is used only under the full key of everything that determines it (for a pool: target class and
            hyper-parameters, recipe, data, evaluation seed, code; for a decoder: its settings, the client, the
            released and original images, the seed, code), anything else is retrained with one line
            (:class:`~bench.attacks.shadow_pool.ShadowCache`, :class:`~bench.attacks.cache.DecoderCache`).
            ``auto``: ``<trainer.default_root_dir>/shadow_cache`` for ``bench fit``, one folder shared by the points
            of a ``bench sweep`` (``<sweep log folder>/shadow_cache``), ``shadow_cache/`` beside the checkpoint for
            ``bench evaluate``; None: off.
    """

    #: reports on training, takes no part in it: shadow models trained by the target's recipe leave it out
    part_of_training_recipe = False

    def __init__(
        self,
        attacks: Optional[list[Attack]] = None,
        seed: int = 0,
        records_dir: str = DEFAULT_RECORDS_DIR,
        leaderboard_dir: Optional[str] = DEFAULT_LEADERBOARD_DIR,
        paper: Optional[dict[str, Any]] = None,
        enabled: bool = True,
        allow_untrained: bool = False,
        experiment: Optional[str] = None,
        budget_check: bool = False,
        shadow_cache: Optional[str] = AUTO_SHADOW_CACHE,
    ) -> None:
        self.attacks = attacks
        self.seed = seed
        self.records_dir = records_dir
        self.leaderboard_dir = leaderboard_dir
        self.paper = paper
        self.enabled = enabled
        self.experiment = experiment
        self.allow_untrained = allow_untrained
        self.budget_check = budget_check
        self.shadow_cache = shadow_cache
        #: where ``shadow_cache: auto`` puts the cache: the Trainer's default_root_dir (``bench evaluate``: beside the
        #: checkpoint); None: nowhere known yet, so no cache
        self.run_root: Optional[str] = None
        #: the folder a sweep's points share for ``shadow_cache: auto`` (``bench sweep`` sets it; None: none)
        self.sweep_cache: Optional[str] = None
        #: the full run configuration; ``bench fit`` sets it from the parsed command line
        self.run_config: Optional[dict[str, Any]] = None
        self.last_record_path: Optional[Path] = None
        #: what the last evaluation left (record, path, failed attacks)
        self.outcome: Optional[Outcome] = None
        #: `bench fit` refreshes the leaderboard and prints the summary itself, after the loggers' closing lines
        self.defer_summary = False
        self._fit_started: Optional[float] = None
        self._log_dir: Optional[str] = None
        self._device: Optional[torch.device] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled or trainer.fast_dev_run:
            return
        self.run_root = str(trainer.default_root_dir)
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            # the harness runs the whole model on rank 0: sharded parameters would not be there
            raise BenchError(
                f"the privacy evaluation supports single-device and DDP training, not "
                f"{type(trainer.strategy).__name__}; use --trainer.strategy ddp or --evaluation.enabled false"
            )
        if not self.allow_untrained:
            budget = {
                "--trainer.max_epochs": trainer.max_epochs,
                "--trainer.max_steps": trainer.max_steps,
                "--trainer.limit_train_batches": trainer.limit_train_batches,
            }
            zero = [f"{option} {value}" for option, value in budget.items() if value == 0]
            if zero:
                raise BenchError(
                    f"{', '.join(zero)}: the model would not train, and an untrained model is not a result; "
                    "give it a training budget, or --evaluation.allow_untrained true to record it anyway"
                )
        # every rank checks (the same deterministic facts), so that all of them stop together under DDP
        if isinstance(pl_module, PrivacyModule) and isinstance(trainer.datamodule, PrivacyDataModule):
            self.check_preconditions(pl_module, trainer.datamodule)

    def evaluator(self) -> Evaluator:
        """The evaluator this callback's arguments configure (read now: `bench evaluate` may have changed them)."""
        return Evaluator(
            attacks=self.attacks,
            seed=self.seed,
            records_dir=self.records_dir,
            leaderboard_dir=self.leaderboard_dir,
            paper=self.paper,
            experiment=self.experiment,
            allow_untrained=self.allow_untrained,
            budget_check=self.budget_check,
            shadow_cache=self.shadow_cache_dir(),
        )

    def shadow_cache_dir(self) -> Optional[str]:
        """The shadow cache folder this run uses: ``shadow_cache`` itself, or for ``auto`` the folder shared by the
        points of the ``bench sweep`` that started this run (``--sweep_cache``), else ``<run_root>/shadow_cache``
        (None without a run root: a script that never fitted through this callback keeps no cache)."""
        if self.shadow_cache != AUTO_SHADOW_CACHE:
            return self.shadow_cache
        if self.sweep_cache is not None:
            return self.sweep_cache
        return None if self.run_root is None else str(Path(self.run_root) / "shadow_cache")

    def check_preconditions(self, module: PrivacyModule, datamodule: PrivacyDataModule) -> None:
        """What would make the evaluation fail after the work, checked before it: outputs, pool sizes."""
        self.evaluator().check_preconditions(module, datamodule)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()
        # Lightning moves the module to the CPU before on_fit_end: remember where the attacks should run
        self._device = trainer.strategy.root_device
        # log_dir is agreed on by a collective call: ask now, while every rank is here
        checkpoint_dir = getattr(trainer.checkpoint_callback, "dirpath", None)
        self._log_dir = checkpoint_dir or trainer.log_dir

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # `bench evaluate` reports a checkpoint under the configuration that trained it
        if self.run_config is not None:
            checkpoint.setdefault("bench", {})["run_config"] = self.run_config

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.global_rank != 0:
            return
        if trainer.fast_dev_run:
            print("bench: fast_dev_run is a smoke test: no evaluation and no record", flush=True)
            return
        if trainer.global_step == 0 and not self.allow_untrained:
            raise BenchError(
                "the model took no optimizer step (no training batches?), and an untrained model is not a "
                "result: no record written; --evaluation.allow_untrained true records it anyway"
            )
        if not isinstance(pl_module, PrivacyModule) or not isinstance(trainer.datamodule, PrivacyDataModule):
            raise BenchError("the privacy evaluation needs a bench PrivacyModule trained on a bench PrivacyDataModule")
        fit_seconds = None if self._fit_started is None else time.perf_counter() - self._fit_started
        if self._device is not None:
            pl_module.to(self._device)
        config = self.run_config or fallback_config(pl_module, trainer.datamodule, trainer, self.evaluator())
        evaluator = self.evaluator()
        self.outcome = evaluator.run(
            pl_module,
            trainer.datamodule,
            config=config,
            training=training_progress(trainer),
            run=run_facts_from_trainer(trainer, trainer.datamodule, config),
            fit_seconds=fit_seconds,
            loggers=list(trainer.loggers),
            step=trainer.global_step,
            log_dir=self._log_dir,
        )
        self.last_record_path = self.outcome.path
        if not self.defer_summary:  # outside `bench fit` (a script): finish here; `bench fit` finishes in after_fit
            evaluator.refresh_leaderboard(self.outcome)
            print(self.outcome.summary(), flush=True)  # only rank 0 gets here

    @property
    def summary(self) -> Optional[str]:
        """The closing summary of the last evaluation (None before one)."""
        return None if self.outcome is None else self.outcome.summary()
