"""Run the evaluation harness when training ends, and leave a record, logs and a leaderboard."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor
from torchvision.utils import make_grid, save_image

from bench.attacks.base import Attack
from bench.datamodules.base import PrivacyDataModule
from bench.errors import BenchError
from bench.harness import Evaluation, build_record, default_attacks, evaluate
from bench.modules.base import PrivacyModule
from bench.records import DEFAULT_LEADERBOARD_DIR, DEFAULT_RECORDS_DIR, validate_record, write_record


#: the fewest samples per pool any evaluation needs (an attacker trains on its pool, utility is measured on test)
HARNESS_MIN_POOL_SIZES = {"test": 1, "attacker": 2}


class PrivacyEvaluation(Callback):
    """At the end of ``fit``: evaluate the method, write its result record, refresh the leaderboard.

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
    """

    #: reports on training, takes no part in it: shadow models trained by the target's recipe leave it out
    part_of_training_recipe = False

    def __init__(self, attacks: Optional[list[Attack]] = None, seed: int = 0, records_dir: str = DEFAULT_RECORDS_DIR,
                 leaderboard_dir: Optional[str] = DEFAULT_LEADERBOARD_DIR, paper: Optional[dict[str, Any]] = None,
                 enabled: bool = True, allow_untrained: bool = False, experiment: Optional[str] = None,
                 budget_check: bool = False) -> None:
        self.attacks = attacks
        self.seed = seed
        self.records_dir = records_dir
        self.leaderboard_dir = leaderboard_dir
        self.paper = paper
        self.enabled = enabled
        self.experiment = experiment
        self.allow_untrained = allow_untrained
        self.budget_check = budget_check
        #: the full run configuration; ``bench fit`` sets it from the parsed command line
        self.run_config: Optional[dict[str, Any]] = None
        self.last_record_path: Optional[Path] = None
        #: the closing summary; `bench fit` prints it after the loggers' own closing lines (``defer_summary``)
        self.summary: Optional[str] = None
        self.defer_summary = False
        self._fit_started: Optional[float] = None
        self._log_dir: Optional[str] = None
        self._device: Optional[torch.device] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled or trainer.fast_dev_run:
            return
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            # the harness runs the whole model on rank 0: sharded parameters would not be there
            raise BenchError(f"the privacy evaluation supports single-device and DDP training, not "
                             f"{type(trainer.strategy).__name__}; use --trainer.strategy ddp or --evaluation.enabled false")
        if not self.allow_untrained:
            budget = {"--trainer.max_epochs": trainer.max_epochs, "--trainer.max_steps": trainer.max_steps,
                      "--trainer.limit_train_batches": trainer.limit_train_batches}
            zero = [f"{option} {value}" for option, value in budget.items() if value == 0]
            if zero:
                raise BenchError(f"{', '.join(zero)}: the model would not train, and an untrained model is not a result; "
                                 "give it a training budget, or --evaluation.allow_untrained true to record it anyway")
        # every rank checks (the same deterministic facts), so that all of them stop together under DDP
        if isinstance(pl_module, PrivacyModule) and isinstance(trainer.datamodule, PrivacyDataModule):
            self.check_preconditions(pl_module, trainer.datamodule)

    def check_preconditions(self, module: PrivacyModule, datamodule: PrivacyDataModule) -> None:
        """What would make the evaluation fail after the work, checked before it: outputs, pool sizes."""
        _check_writable(self.records_dir, "--evaluation.records_dir")
        if self.leaderboard_dir is not None:
            _check_writable(self.leaderboard_dir, "--evaluation.leaderboard_dir")
        attacks = [attack for attack in (default_attacks() if self.attacks is None else self.attacks) if attack.applies_to(module)]
        sizes = datamodule.pool_sizes()
        short = [f"{pool} pool {sizes.get(pool, 0)} (needs {count})" for pool, count in HARNESS_MIN_POOL_SIZES.items()
                 if sizes.get(pool, 0) < count]
        problems = [("the harness", ", ".join(short))] if short else []
        problems += [(f"attack {attack.name}", attack.pool_problem(sizes)) for attack in attacks]
        for who, problem in problems:
            if problem:
                raise BenchError(f"{datamodule.name}: {who} cannot run on these pools: {problem}; "
                                 "raise --data.pool_limit or change --data.fractions")

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
            raise BenchError("the model took no optimizer step (no training batches?), and an untrained model is not a "
                             "result: no record written; --evaluation.allow_untrained true records it anyway")
        if not isinstance(pl_module, PrivacyModule) or not isinstance(trainer.datamodule, PrivacyDataModule):
            raise BenchError("the privacy evaluation needs a bench PrivacyModule trained on a bench PrivacyDataModule")
        fit_seconds = None if self._fit_started is None else time.perf_counter() - self._fit_started
        if self._device is not None:
            pl_module.to(self._device)
        self.evaluate_and_record(pl_module, trainer.datamodule, trainer=trainer, fit_seconds=fit_seconds)

    def evaluate_and_record(self, module: PrivacyModule, datamodule: PrivacyDataModule, *,
                            trainer: Optional[L.Trainer] = None, fit_seconds: Optional[float] = None,
                            config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Evaluate, write the record, log to the trainer's loggers and refresh the leaderboard."""
        training = _training_progress(trainer) if trainer is not None else (config or {}).get("training")
        untrained = isinstance(training, dict) and training.get("global_step") == 0
        if trainer is None:  # `bench evaluate`: the checks `bench fit` made before training
            if untrained and not self.allow_untrained:
                raise BenchError("the checkpoint is of a model that took no optimizer step, and an untrained model is not "
                                 "a result; --evaluation.allow_untrained true evaluates it anyway")
            self.check_preconditions(module, datamodule)
        attacks = default_attacks() if self.attacks is None else self.attacks
        if not sys.stderr.isatty():  # a bar's redraws are one line each in a log: the harness prints a line per attack
            for attack in attacks:
                if getattr(attack, "progress", False):
                    attack.progress = False
        evaluation = evaluate(module, datamodule, attacks, seed=self.seed, budget_check=self.budget_check)
        evaluation.utility.update(_chance_level(evaluation.utility.get("accuracy"), datamodule, untrained))
        loggers = list(trainer.loggers) if trainer is not None else []
        wandb_logger = next((logger for logger in loggers if isinstance(logger, WandbLogger)), None)
        record = build_record(
            evaluation, module, datamodule,
            config=config or self.run_config or _fallback_config(module, datamodule, trainer, self),
            seed=_training_seed(config or self.run_config), evaluation_seed=self.seed, paper=self.paper,
            wandb=_wandb_reference(wandb_logger), fit_seconds=fit_seconds, training=training,
        )
        if self.experiment is not None:
            record["experiment"] = str(self.experiment)
        validate_record(json.loads(json.dumps(record, default=str)))  # a bad record fails before any file is written
        record["artifacts"] = _save_example_grids(evaluation, Path(self.records_dir) / "artifacts", record["record_id"])
        record["artifacts"].update(_save_roc_plot(record, Path(self.records_dir) / "artifacts"))
        path = write_record(record, self.records_dir)
        self.last_record_path = path
        _log(loggers, evaluation, record, step=trainer.global_step if trainer is not None else 0)
        leaderboard = self._refresh_leaderboard() if self.leaderboard_dir is not None else None
        self.summary = _summary(record, path, leaderboard, self._log_dir if trainer is not None else None)
        if not self.defer_summary:
            print(self.summary, flush=True)  # only rank 0 gets here
        return record


    def _refresh_leaderboard(self) -> Optional[Path]:
        """Regenerate the leaderboard; other records' problems are one line each and never cost this run its summary."""
        from bench.leaderboard import generate_leaderboard

        try:
            result = generate_leaderboard([self.records_dir], self.leaderboard_dir)
        except Exception as error:  # the record is written: a leaderboard problem must not hide it
            print(f"bench: warning: leaderboard {self.leaderboard_dir} not regenerated ({type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}); run `bench leaderboard`", file=sys.stderr, flush=True)
            return None
        for file, problem in result.problems:
            print(f"bench: warning: skipped malformed record {file}: {problem}", file=sys.stderr, flush=True)
        return result.markdown


def _chance_level(accuracy: Optional[float], datamodule: PrivacyDataModule, untrained: bool) -> dict[str, Any]:
    """The majority-class accuracy on the test pool, and whether the model did no better than it.

    A model within two standard errors of always answering the most frequent class (an untrained or diverged
    run) learned nothing: its attacks measure nothing either, so its record is marked ``degenerate`` and the
    leaderboard leaves it out unless asked.
    """
    labels = datamodule.pool("test").labels
    if labels.ndim != 1 or labels.numel() == 0 or accuracy is None:
        return {"degenerate": untrained}
    chance = torch.bincount(labels).max().item() / labels.numel()
    margin = 2 * math.sqrt(chance * (1 - chance) / labels.numel())
    return {"chance_accuracy": chance, "degenerate": untrained or accuracy <= chance + margin}


def _check_writable(directory: str, option: str) -> None:
    """Create ``directory`` and a file in it now, so that an unwritable one is found before training, not after."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise BenchError(f"{option} {directory} is not writable ({type(error).__name__}: {error.strerror or error}); "
                         f"choose another with {option}") from error


def _training_progress(trainer: L.Trainer) -> dict[str, Any]:
    """What was actually trained, which a configured budget does not say (early stopping, max_time, limits)."""
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    return {"epochs": trainer.current_epoch, "global_step": trainer.global_step, "world_size": trainer.world_size,
            "limit_train_batches": trainer.limit_train_batches, "checkpoint": checkpoint}


def _training_seed(config: Optional[dict[str, Any]]) -> Optional[int]:
    seed = (config or {}).get("seed_everything", os.environ.get("PL_GLOBAL_SEED"))  # the env: set by seed_everything
    if seed is None or isinstance(seed, bool):  # `seed_everything: true` picks a seed that Lightning records in the env
        seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def _fallback_config(module: PrivacyModule, datamodule: PrivacyDataModule, trainer: Optional[L.Trainer],
                     callback: PrivacyEvaluation) -> dict[str, Any]:
    """The configuration of a run that did not come through ``bench fit`` (e.g. a Python script)."""
    trainer_config = {}
    if trainer is not None:
        trainer_config = {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                          "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                          "precision": str(trainer.precision)}
    return {"model": {"class_path": module.describe()["class"], "init_args": dict(module.hparams)},
            "data": {"class_path": datamodule.describe()["class"], "init_args": dict(datamodule.hparams)},
            "trainer": trainer_config,
            "evaluation": {"seed": callback.seed, "attacks": [type(a).__name__ for a in callback.attacks or []] or "all"}}


def _wandb_reference(logger: Optional[WandbLogger]) -> Optional[dict[str, Any]]:
    if logger is None:
        return None
    if hasattr(logger, "reference"):
        return logger.reference()
    run = logger.experiment
    return {"project": logger.name, "run_id": getattr(run, "id", None), "url": getattr(run, "url", None)}


def _save_roc_plot(record: dict[str, Any], directory: Path) -> dict[str, str]:
    """One log-log ROC plot of every attack that reported its ROC curve (``details["roc"]``: {fpr, tpr})."""
    curves = {entry["attack"]: entry["details"]["roc"] for entry in record["privacy"]
              if isinstance((entry.get("details") or {}).get("roc"), dict)}
    if not curves:
        return {}
    from bench.metrics.membership import plot_roc

    path = plot_roc(curves, directory / f"{record['record_id'][:8]}-roc.png", title=record["method"]["label"])
    return {"roc": str(path)}


def _save_example_grids(evaluation: Evaluation, directory: Path, record_id: str) -> dict[str, str]:
    """Originals (top row) over reconstructions (bottom row), one PNG per attack that reconstructs."""
    artifacts = {}
    for attack, (originals, reconstructions) in evaluation.examples.items():
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{record_id[:8]}-{attack}.png"
        save_image(_example_grid(originals, reconstructions), path)
        artifacts[f"{attack}_examples"] = str(path)
    return artifacts


def _example_grid(originals: Tensor, reconstructions: Tensor) -> Tensor:
    reconstructions = reconstructions.clamp(0, 1).to(originals.dtype)
    if reconstructions.shape[1] != originals.shape[1]:  # e.g. a grey reconstruction of a colour image
        reconstructions = reconstructions.expand(-1, originals.shape[1], -1, -1)
    return make_grid(torch.cat([originals, reconstructions]), nrow=len(originals), padding=1, pad_value=1.0)


def _flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    metrics = {f"eval/{key}": value for key, value in record["utility"].items()}
    for entry in record["privacy"]:
        metrics.update({f"eval/{entry['attack']}/{key}": value for key, value in entry["metrics"].items()})
    metrics.update({f"eval/cost/{key}": value for key, value in record["cost"].items() if isinstance(value, (int, float))})
    return metrics


def _log(loggers, evaluation: Evaluation, record: dict[str, Any], step: int) -> None:
    metrics = _flat_metrics(record)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if isinstance(logger, WandbLogger) and getattr(logger, "mode", "online") != "disabled":
            for attack, (originals, reconstructions) in evaluation.examples.items():
                logger.log_image(key=f"eval/{attack}/examples", images=[_example_grid(originals, reconstructions)],
                                 caption=["originals (top) and reconstructions (bottom)"])
            columns = ["record_id", "method", "label", "dataset", "network", "seed"] + list(metrics)
            row = [record["record_id"], record["method"]["name"], record["method"]["label"], record["dataset"]["name"],
                   record["method"]["network"], record["seed"]] + list(metrics.values())
            logger.log_table(key="eval/result_record", columns=columns, data=[row])


def _summary(record: dict[str, Any], path: Path, leaderboard: Optional[Path], log_dir: Optional[str]) -> str:
    parts = [f"accuracy {record['utility']['accuracy']:.4f}"]
    for entry in record["privacy"]:
        parts.append(entry["attack"] + " " + " ".join(f"{k} {v:.4g}" for k, v in entry["metrics"].items() if v is not None))
    lines = [f"\nbench: {record['method']['label']} on {record['dataset']['name']}: " + " | ".join(parts)]
    if record["utility"].get("degenerate"):
        lines.append(f"  DEGENERATE: accuracy at chance level ({record['utility'].get('chance_accuracy', 0):.4f} by always "
                     "answering the most frequent class) or no training: the record is marked degenerate and the "
                     "leaderboard leaves it out")
    if log_dir:
        lines.append(f"  logs and checkpoints: {log_dir}")
    if record.get("wandb") and record["wandb"].get("dir"):
        how = "" if record["wandb"]["mode"] == "online" else " (offline; upload with `wandb sync`)"
        lines.append(f"  W&B run: {record['wandb'].get('url') or Path(record['wandb']['dir']).parent}{how}")
    lines.append(f"  result record: {path}")
    if leaderboard is not None:
        lines.append(f"  leaderboard: {leaderboard}")
    return "\n".join(lines)
