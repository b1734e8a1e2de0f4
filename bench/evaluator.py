"""The evaluator: evaluate a trained method -> build its record -> write it -> log it (and refresh a leaderboard).

One owner for what happens after training, whoever asks: the :class:`~bench.callbacks.PrivacyEvaluation` callback
hands it the trained module at the end of ``fit``, ``bench evaluate`` hands it a checkpoint's module, and
:func:`bench.testing.check_method_contract` calls it directly. The :class:`~bench.records.Record` is built once,
here, and validated by its construction.

A failing attack never costs the others their results: its privacy entry keeps the error and no metrics, the
summary says ``<attack> FAILED: ...``, and :attr:`Outcome.failed_attacks` lets the caller exit non-zero. A records
folder that cannot be written at the end (read-only, full) costs one warning line: the record and its artifacts go
to a fallback folder the summary names.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from bench.attacks.base import Attack
from bench.attacks.shadow_pool import TargetTraining
from bench.errors import BenchError, writable_folder
from bench.harness import Evaluation, build_record, default_attacks, evaluate
from bench.metrics.reconstruction import ExampleImages, per_image_metrics
from bench.records import DEFAULT_RECORDS_DIR, Record, effective_batch, precision_name, write_record

if TYPE_CHECKING:
    import lightning as L

    from bench.datamodules.base import PrivacyDataModule
    from bench.modules.base import PrivacyModule

#: the fewest samples per pool any evaluation needs (an attacker trains on its pool, utility is measured on test)
HARNESS_MIN_POOL_SIZES = {"test": 1, "attacker": 2}
#: `bench fit` and `bench evaluate` exit with this code when an attack failed (the record keeps the others' results)
#: or the record could not be written where asked (it was kept in a fallback folder)
EXIT_INCOMPLETE = 1


@dataclass
class Outcome:
    """What one evaluation left: the record, where it is, and what went wrong without stopping it."""

    record: Record
    path: Path
    evaluation: Evaluation
    #: where the record went instead of the records folder (which could not be written), or None
    fallback_from: Optional[str] = None
    leaderboard: Optional[Path] = None
    log_dir: Optional[str] = None
    problems: list[str] = field(default_factory=list)

    @property
    def failed_attacks(self) -> list[str]:
        return [entry.attack for entry in self.record.failed_attacks]

    @property
    def complete(self) -> bool:
        return not self.failed_attacks and self.fallback_from is None

    def summary(self) -> str:
        return _summary(self)

    def incomplete_error(self) -> BenchError:
        """The one line `bench fit`/`bench evaluate` end with (exit code 1) when the outcome is not complete."""
        reasons = []
        if self.failed_attacks:
            reasons.append(
                f"attack{'s' if len(self.failed_attacks) > 1 else ''} {', '.join(self.failed_attacks)} "
                f"failed (the record keeps every other attack's result)"
            )
        if self.fallback_from is not None:
            reasons.append(f"records folder {self.fallback_from} could not be written")
        return BenchError(f"{'; '.join(reasons)}: record {self.path}")


def evaluation_device(name: str) -> str:
    """``--device`` of ``bench evaluate`` and ``bench audit``, checked before anything is loaded: a GPU this machine
    lacks is one line, not a driver traceback. ``auto``: cuda if available.

    Checkpoints and weights are read onto the CPU whatever device wrote them, then moved here."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BenchError(f"--device {name}: not a device; give cpu, cuda, cuda:1, ... or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BenchError(f"--device {name}: this machine has no usable GPU; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise BenchError(
                f"--device {name}: this machine has {count} GPU{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})"
            )
    elif device.type != "cpu" and device.type != "mps":
        raise BenchError(f"--device {name}: bench evaluates on cpu or cuda; give cpu, cuda, cuda:1, ... or auto")
    return str(device)


class Evaluator:
    """Evaluate a trained method, build its :class:`Record`, write it, log it; arguments as
    :class:`~bench.callbacks.PrivacyEvaluation`'s (which hands them on)."""

    def __init__(
        self,
        attacks: Optional[Sequence[Attack]] = None,
        seed: int = 0,
        records_dir: str = DEFAULT_RECORDS_DIR,
        leaderboard_dir: Optional[str] = None,
        paper: Optional[dict[str, Any]] = None,
        experiment: Optional[str] = None,
        allow_untrained: bool = False,
        budget_check: bool = False,
        shadow_cache: Optional[str] = None,
    ) -> None:
        self.attacks = None if attacks is None else list(attacks)
        self.seed = seed
        self.records_dir = records_dir
        self.leaderboard_dir = leaderboard_dir
        self.paper = paper
        self.experiment = experiment
        self.allow_untrained = allow_untrained
        self.budget_check = budget_check
        #: the folder of shadow pools kept across runs (None: every evaluation trains its own)
        self.shadow_cache = shadow_cache

    # ------------------------------------------------------------------ before
    def check_preconditions(self, module: PrivacyModule, datamodule: PrivacyDataModule) -> None:
        """What would make the evaluation fail after the work, checked before it: outputs, pool sizes."""
        writable_folder(self.records_dir, "--evaluation.records_dir")
        if self.leaderboard_dir is not None:
            writable_folder(self.leaderboard_dir, "--evaluation.leaderboard_dir")
        if self.shadow_cache is not None:
            writable_folder(self.shadow_cache, "--evaluation.shadow_cache")
        attacks = [attack for attack in self._attacks() if attack.applies_to(module)]
        sizes = datamodule.pool_sizes()
        short = [
            f"{pool} pool {sizes.get(pool, 0)} (needs {count})"
            for pool, count in HARNESS_MIN_POOL_SIZES.items()
            if sizes.get(pool, 0) < count
        ]
        problems = [("the harness", ", ".join(short))] if short else []
        problems += [(f"attack {attack.name}", attack.pool_problem(sizes)) for attack in attacks]
        for who, problem in problems:
            if problem:
                raise BenchError(
                    f"{datamodule.name}: {who} cannot run on these pools: {problem}; "
                    "raise --data.pool_limit or change --data.fractions"
                )

    def _attacks(self) -> list[Attack]:
        if self.attacks is None:
            self.attacks = default_attacks()
        return self.attacks

    # ------------------------------------------------------------------ evaluate -> record
    def evaluate(
        self,
        module: PrivacyModule,
        datamodule: PrivacyDataModule,
        *,
        config: dict[str, Any],
        training: Optional[dict[str, Any]],
        run: dict[str, Any],
        fit_seconds: Optional[float] = None,
        wandb: Optional[dict[str, Any]] = None,
    ) -> tuple[Record, Evaluation]:
        """Run the harness and build the record (validated here, once)."""
        attacks = self._attacks()
        if not sys.stderr.isatty():  # a bar's redraws are one line each in a log: the harness prints a line per attack
            for attack in attacks:
                if getattr(attack, "progress", False):
                    attack.progress = False
        untrained = isinstance(training, dict) and training.get("global_step") == 0
        # how the target trained, for shadows that train like it: a model trained elsewhere (no training facts) has
        # none known, and its shadows train by the attacks' stated or fallback recipe (the audit says so)
        target = TargetTraining() if training is None else TargetTraining.of(module, datamodule, training.get("epochs"))
        evaluation = evaluate(
            module,
            datamodule,
            attacks,
            seed=self.seed,
            budget_check=self.budget_check,
            shadow_cache=self.shadow_cache,
            target=target,
        )
        evaluation.utility.update(chance_level(evaluation.utility.get("accuracy"), datamodule, untrained))
        evaluation.per_example_scores = _per_example_scores(attacks, evaluation)  # arrays: a file, not the record
        evaluation.most_exposed = {
            attack.name: attack.most_exposed
            for attack in attacks
            if getattr(attack, "most_exposed", None) and attack.name in _succeeded(evaluation)
        }
        record = build_record(
            evaluation,
            module,
            datamodule,
            config=config,
            seed=training_seed(config),
            evaluation_seed=self.seed,
            paper=self.paper,
            wandb=wandb,
            fit_seconds=fit_seconds,
            training=training,
            run=run,
            experiment=self.experiment,
        )
        return record, evaluation

    # ------------------------------------------------------------------ write
    def write(
        self, record: Record, evaluation: Evaluation, *, fallback_dir: Optional[str] = None
    ) -> tuple[Record, Path, Optional[str]]:
        """Write the artifacts and the record into the records folder; if that fails (read-only, full), into
        ``fallback_dir`` (or a new temporary folder). Returns the record (with its artifacts), its path, and the
        folder that failed (None when none did)."""
        try:
            return (*self._write_into(record, evaluation, Path(self.records_dir)), None)
        except OSError as error:
            target = Path(fallback_dir) if fallback_dir else Path(tempfile.mkdtemp(prefix="bench-record-"))
            target = target / "fallback-record"
            written, path = self._write_into(record, evaluation, target)
            print(
                f"bench: warning: records folder {self.records_dir} could not be written ({type(error).__name__}: "
                f"{error.strerror or str(error).splitlines()[0]}); the record is kept at {path}",
                file=sys.stderr,
                flush=True,
            )
            return written, path, self.records_dir

    @staticmethod
    def _write_into(record: Record, evaluation: Evaluation, directory: Path) -> tuple[Record, Path]:
        artifacts = _save_example_grids(evaluation, directory / "artifacts", record.record_id)
        artifacts.update(_save_roc_plot(record, directory / "artifacts"))
        artifacts.update(_save_per_example_scores(evaluation, directory / "artifacts", record.record_id))
        artifacts.update(_save_most_exposed(evaluation, directory / "artifacts", record.record_id))
        record = record.model_copy(update={"artifacts": artifacts})
        return record, write_record(record, directory)

    # ------------------------------------------------------------------ all of it
    def run(
        self,
        module: PrivacyModule,
        datamodule: PrivacyDataModule,
        *,
        config: dict[str, Any],
        training: Optional[dict[str, Any]],
        run: dict[str, Any],
        fit_seconds: Optional[float] = None,
        loggers: Sequence[Any] = (),
        step: int = 0,
        log_dir: Optional[str] = None,
    ) -> Outcome:
        """Evaluate -> record -> write -> log. The leaderboard is refreshed by :meth:`refresh_leaderboard`."""
        wandb = _wandb_reference(next((logger for logger in loggers if _is_wandb(logger)), None))
        record, evaluation = self.evaluate(
            module, datamodule, config=config, training=training, run=run, fit_seconds=fit_seconds, wandb=wandb
        )
        record, path, failed_dir = self.write(record, evaluation, fallback_dir=log_dir)
        _log(loggers, evaluation, record, step=step)
        return Outcome(record, path, evaluation, fallback_from=failed_dir, log_dir=log_dir)

    def refresh_leaderboard(self, outcome: Outcome) -> Optional[Path]:
        """Regenerate the leaderboard; other records' problems are one line each and never cost this run its summary."""
        if self.leaderboard_dir is None or outcome.fallback_from is not None:
            return None
        from bench.leaderboard import generate_leaderboard

        try:
            result = generate_leaderboard([self.records_dir], self.leaderboard_dir)
        except Exception as error:  # the record is written: a leaderboard problem must not hide it
            print(
                f"bench: warning: leaderboard {self.leaderboard_dir} not regenerated ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); run `bench leaderboard`",
                file=sys.stderr,
                flush=True,
            )
            return None
        for file, problem in result.problems:
            print(f"bench: warning: skipped malformed record {file}: {problem}", file=sys.stderr, flush=True)
        outcome.leaderboard = result.markdown
        return result.markdown


# ---------------------------------------------------------------------- run facts
def fallback_config(
    module: PrivacyModule, datamodule: PrivacyDataModule, trainer: Optional[L.Trainer], evaluator: Evaluator
) -> dict[str, Any]:
    """The configuration of a run that did not come through ``bench fit`` (e.g. a Python script)."""
    trainer_config = {}
    if trainer is not None:
        trainer_config = {
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision),
        }
    return {
        "model": {"class_path": module.describe()["class"], "init_args": dict(module.hparams)},
        "data": {"class_path": datamodule.describe()["class"], "init_args": dict(datamodule.hparams)},
        "trainer": trainer_config,
        "evaluation": {"seed": evaluator.seed, "attacks": [type(a).__name__ for a in evaluator.attacks or []] or "all"},
    }


def run_facts_from_trainer(trainer: L.Trainer, datamodule: PrivacyDataModule, config: dict[str, Any]) -> dict[str, Any]:
    """The run facts the leaderboard groups by, from the trainer that ran (not from its configuration)."""
    from bench.records import config_names

    batch = getattr(datamodule, "batch_size", None)
    if batch is None:
        batch = dict(getattr(datamodule, "hparams", {}) or {}).get("batch_size")
    world = int(trainer.world_size)
    return {
        "world_size": world,
        "effective_batch": effective_batch(batch, world, trainer.accumulate_grad_batches),
        "precision": precision_name(trainer.precision),
        "config_names": config_names(config),
        "budget": {"unit": "epochs", "value": int(trainer.current_epoch)},
    }


def training_progress(trainer: L.Trainer) -> dict[str, Any]:
    """What was actually trained, which a configured budget does not say (early stopping, max_time, limits)."""
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
    return {
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "limit_train_batches": trainer.limit_train_batches,
        "checkpoint": checkpoint,
    }


def training_seed(config: Optional[dict[str, Any]]) -> Optional[int]:
    seed = (config or {}).get("seed_everything", os.environ.get("PL_GLOBAL_SEED"))  # the env: set by seed_everything
    if seed is None or isinstance(seed, bool):  # `seed_everything: true` picks a seed that Lightning records in the env
        seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def chance_level(accuracy: Optional[float], datamodule: PrivacyDataModule, untrained: bool) -> dict[str, Any]:
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


# ---------------------------------------------------------------------- artifacts and loggers
def _is_wandb(logger: Any) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def _wandb_reference(logger: Any) -> Optional[dict[str, Any]]:
    if logger is None:
        return None
    if hasattr(logger, "reference"):
        return logger.reference()
    run = logger.experiment
    return {"project": logger.name, "run_id": getattr(run, "id", None), "url": getattr(run, "url", None)}


def _save_roc_plot(record: Record, directory: Path) -> dict[str, str]:
    """One log-log ROC plot of every attack that reported its ROC curve (``details["roc"]``: {fpr, tpr})."""
    curves = {
        entry.attack: entry.details["roc"]
        for entry in record.privacy
        if isinstance((entry.details or {}).get("roc"), dict)
    }
    if not curves:
        return {}
    from bench.metrics.membership import plot_roc

    path = plot_roc(curves, directory / f"{record.record_id[:8]}-roc.png", title=record.method.label)
    return {"roc": str(path)}


def _succeeded(evaluation: Evaluation) -> set[str]:
    return {entry["attack"] for entry in evaluation.privacy if not entry.get("error")}


def _save_most_exposed(evaluation: Evaluation, directory: Path, record_id: str) -> dict[str, str]:
    """Per membership attack, a grid of the training images it scores highest, each captioned with where it came
    from and the label it was trained with (a mislabelled canary shows its wrong label): large enough to see."""
    # Figure + the Agg canvas, not pyplot: no global backend switch for whoever imported us (as the leaderboard)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    artifacts = {}
    for attack, exposed in (getattr(evaluation, "most_exposed", None) or {}).items():
        images, entries = exposed["images"], exposed["entries"]
        if not len(images):
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{record_id[:8]}-{attack}-most-exposed.png"
        columns = min(8, len(images))
        rows = -(-len(images) // columns)
        figure = Figure(figsize=(1.6 * columns, 1.85 * rows))
        FigureCanvasAgg(figure)
        axes = figure.subplots(rows, columns, squeeze=False)
        for axis in axes.flat:
            axis.axis("off")
        for rank, (axis, image, entry) in enumerate(zip(axes.flat, images, entries), 1):
            _show_image(axis, image)
            origin = "member" if entry["pool"] == "train" else entry["pool"]  # a natural member, or a canary
            axis.set_title(f"#{rank} {origin} y={entry['label']}", fontsize=8)
        figure.suptitle(
            f"{attack}: the training images scored most likely members (rank, member or canary, trained label)",
            fontsize=9,
        )
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        artifacts[f"{attack}_most_exposed"] = str(path)
    return artifacts


def _show_image(axis, image: Tensor) -> None:
    """A (C, H, W) image in [0, 1] on ``axis``: grey or colour, every pixel a crisp block (no smoothing)."""
    pixels = image.float().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
    axis.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")


def _per_example_scores(attacks: Sequence[Attack], evaluation: Evaluation) -> dict[str, Any]:
    """Every attack's per-example scores of this evaluation, {"<attack>.<column>": array} (failed attacks: none)."""
    succeeded = _succeeded(evaluation)
    columns = {}
    for attack in attacks:
        per_example = getattr(attack, "per_example_scores", None)
        if per_example and attack.name in succeeded:
            columns.update({f"{attack.name}.{column}": values for column, values in per_example.items()})
    return columns


def _save_per_example_scores(evaluation: Evaluation, directory: Path, record_id: str) -> dict[str, str]:
    """The per-example scores as a compressed npz beside the record, named and sha256-hashed in its artifacts.

    Columns per attack: pool (0 train, 1 nonmember, 2 canary), index in that pool (canaries: in the non-member
    pool they were taken from), label queried, member (canaries: inclusion), score (higher: member; NaN: unscored).
    """
    columns = getattr(evaluation, "per_example_scores", None)
    if not columns:
        return {}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record_id[:8]}-per-example-scores.npz"
    np.savez_compressed(path, **columns)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"per_example_scores": str(path), "per_example_scores_sha256": digest}


def _save_example_grids(evaluation: Evaluation, directory: Path, record_id: str) -> dict[str, str]:
    """One PNG per attack that reconstructs (:func:`example_figure`)."""
    artifacts = {}
    for attack, examples in evaluation.examples.items():
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{record_id[:8]}-{attack}.png"
        example_figure(examples, attack).savefig(path, dpi=GRID_DPI)
        artifacts[f"{attack}_examples"] = str(path)
    return artifacts


#: each image of a grid is shown this many inches wide at GRID_DPI: 120 pixels, nearest-neighbour (8x8 digits stay
#: crisp), large enough to see
GRID_IMAGE_INCHES = 1.2
GRID_DPI = 100
#: images per row of the grid: the reconstruction attacks give the 8 nearest the mean PSNR, then the 8 best
GRID_COLUMNS = 8


def example_figure(examples: ExampleImages, attack: str, columns: int = GRID_COLUMNS):
    """A figure of each group of ``examples`` (:class:`~bench.metrics.reconstruction.ExampleImages`) under its title:
    rows of at most ``columns`` originals, each above the row of what the attack made of them, every one of those
    captioned with its PSNR against its original; the row names on the left."""
    # Figure + the Agg canvas, not pyplot: no global backend switch for whoever imported us (as the leaderboard)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    originals = examples.originals.float().cpu()
    reconstructions = examples.reconstructions.float().clamp(0, 1).cpu()
    if reconstructions.shape[1] != originals.shape[1]:  # e.g. a grey reconstruction of a colour image
        reconstructions = reconstructions.expand(-1, originals.shape[1], -1, -1)
    psnr = per_image_metrics(reconstructions, originals.clamp(0, 1))["psnr"]
    per_group = -(-len(originals) // len(examples.groups))
    columns = min(columns, per_group)
    row_pairs = -(-per_group // columns)
    height = (2 * GRID_IMAGE_INCHES + 0.3) * row_pairs * len(examples.groups) + 0.5
    figure = Figure(figsize=(GRID_IMAGE_INCHES * columns + 0.9, height), layout="constrained")
    FigureCanvasAgg(figure)
    source = f" ({examples.source})" if examples.source else ""
    figure.suptitle(f"{attack}{source}: {examples.rows[0]} over {examples.rows[1]} (PSNR in dB)", fontsize=10)
    for group, (title, subfigure) in enumerate(
        zip(examples.groups, figure.subfigures(len(examples.groups), 1, squeeze=False).flat)
    ):
        subfigure.suptitle(title, fontsize=9)
        axes = subfigure.subplots(2 * row_pairs, columns, squeeze=False)
        for axis in axes.flat:
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_frame_on(False)
        for pair in range(row_pairs):
            axes[2 * pair, 0].set_ylabel(examples.rows[0], fontsize=8)
            axes[2 * pair + 1, 0].set_ylabel(examples.rows[1], fontsize=8)
        first = group * per_group
        for offset in range(min(per_group, len(originals) - first)):
            index, pair, column = first + offset, offset // columns, offset % columns
            shown = ((axes[2 * pair, column], originals[index]), (axes[2 * pair + 1, column], reconstructions[index]))
            for axis, image in shown:
                _show_image(axis, image)
            axes[2 * pair + 1, column].set_xlabel(f"{psnr[index].item():.1f}", fontsize=8)
    return figure


def _figure_pixels(figure) -> np.ndarray:
    """The figure as an (H, W, 3) uint8 array, e.g. for a W&B image."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _flat_metrics(record: Record) -> dict[str, float]:
    metrics = {f"eval/{key}": value for key, value in record.utility.items()}
    for entry in record.privacy:
        metrics.update({f"eval/{entry.attack}/{key}": value for key, value in entry.metrics.items()})
    metrics.update({f"eval/cost/{key}": value for key, value in record.cost.items() if isinstance(value, (int, float))})
    return metrics


def _log(loggers: Sequence[Any], evaluation: Evaluation, record: Record, step: int) -> None:
    metrics = _flat_metrics(record)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if _is_wandb(logger) and getattr(logger, "mode", "online") != "disabled":
            for attack, examples in evaluation.examples.items():
                logger.log_image(
                    key=f"eval/{attack}/examples",
                    images=[_figure_pixels(example_figure(examples, attack))],
                    caption=[f"{examples.rows[0]} over {examples.rows[1]}: " + ", then ".join(examples.groups)],
                )
            columns = ["record_id", "method", "label", "dataset", "network", "seed"] + list(metrics)
            row = [
                record.record_id,
                record.method.name,
                record.method.label,
                record.dataset.name,
                record.method.network,
                record.seed,
            ] + list(metrics.values())
            logger.log_table(key="eval/result_record", columns=columns, data=[row])


def _summary(outcome: Outcome) -> str:
    record = outcome.record
    accuracy = record.utility.get("accuracy")
    # `bench audit --release` measures no utility: a client without its server part classifies nothing
    parts = [f"accuracy {accuracy:.4f}" if accuracy is not None else "no utility measured"]
    for entry in record.privacy:
        device = "" if entry.device is None else f", {entry.device}"
        took = "" if entry.seconds is None else f" ({entry.seconds:.1f} s{device})"
        if entry.failed:
            parts.append(f"{entry.attack} FAILED: {entry.error}{took}")
            continue
        metrics = " ".join(f"{k} {v:.4g}" for k, v in entry.metrics.items() if v is not None)
        parts.append(f"{entry.attack} {metrics}{took}")
    lines = [f"\nbench: {record.method.label} on {record.dataset.name}: " + " | ".join(parts)]
    if record.utility.get("degenerate"):
        lines.append(
            f"  DEGENERATE: accuracy at chance level ({record.utility.get('chance_accuracy', 0):.4f} by always "
            "answering the most frequent class) or no training: the record is marked degenerate and the "
            "leaderboard leaves it out"
        )
    if record.failed_attacks:
        lines.append(
            f"  FAILED: {', '.join(outcome.failed_attacks)} (their errors are in the record; the other attacks' "
            "results are kept)"
        )
    if outcome.log_dir:
        lines.append(f"  logs and checkpoints: {outcome.log_dir}")
    if record.wandb and record.wandb.get("dir"):
        how = "" if record.wandb.get("mode") == "online" else " (offline; upload with `wandb sync`)"
        lines.append(f"  W&B run: {record.wandb.get('url') or Path(record.wandb['dir']).parent}{how}")
    where = f" (records folder {outcome.fallback_from} could not be written)" if outcome.fallback_from else ""
    lines.append(f"  result record: {outcome.path}{where}")
    if outcome.leaderboard is not None:
        lines.append(f"  leaderboard: {outcome.leaderboard}")
    return "\n".join(lines)
