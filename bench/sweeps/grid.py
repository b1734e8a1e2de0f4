"""A sweep file's grid points: their ``bench fit`` arguments, resolved configuration and stable key.

A sweep file (``bench/sweeps/*.yaml`` or any YAML file) lists runs, each a shipped config and a grid
of command-line overrides; every point of every grid is one ``bench fit``. A point's *key* is the
SHA-256 of its resolved configuration (what ``bench fit --print_config`` shows for its arguments:
the config files' contents, the overrides and every default), so editing a config, a grid value or
a class default gives the point a new key, and an unchanged point keeps its key, its run folder and
its record across reruns.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.errors import BenchError

#: where the sweep writes each point's checkpoints (``last.ckpt`` is what a requeued or rerun point resumes from)
CHECKPOINT_SUBDIR = "checkpoints"
#: loggers whose points the sweep groups in W&B (by name: nothing from a config file is imported to check it)
WANDB_LOGGERS = (
    "bench.loggers.BenchWandbLogger",
    "lightning.pytorch.loggers.WandbLogger",
    "lightning.pytorch.loggers.wandb.WandbLogger",
)


def expand_sweep(path: str) -> list[list[str]]:
    """The ``bench fit`` argument lists of a sweep file: every run's config, once per point of its grid."""
    import yaml

    from bench import registry

    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise BenchError(f"cannot read sweep {path}: {error}") from error
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), list) or not spec["runs"]:
        raise BenchError(f"sweep {path} must hold a non-empty list `runs` of {{config: NAME, grid: {{key: [values]}}}}")
    commands = []
    for index, run in enumerate(spec["runs"]):
        if not isinstance(run, dict) or "config" not in run:
            raise BenchError(f"sweep {path}: runs[{index}] needs a `config`")
        grid = run.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(values, list) and values for values in grid.values()):
            raise BenchError(f"sweep {path}: runs[{index}].grid must map each key to a non-empty list of values")
        config = registry.resolve_config(str(run["config"]))
        for point in itertools.product(*grid.values()):
            command = ["fit", "--config", config]
            for key, value in zip(grid, point):
                command += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
            commands.append(command)
    return commands


def resolve_config(args: Sequence[str]) -> dict[str, Any]:
    """The full configuration ``bench fit`` would run with these arguments, parsed but nothing instantiated.

    This is LightningCLI's own ``--print_config`` (in this process: after the first point, about 0.1 s
    a point), so the sweep sees exactly what the run will see: ``trainer.devices`` from a config file,
    ``evaluation.records_dir`` as #10 or a user's config sets it, and bad arguments before anything runs.
    """
    import yaml
    from jsonargparse import ArgumentError

    from bench.lightning_cli import resolve_names, run_lightning_cli, summarize_argument_error

    printed, errors = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
            run_lightning_cli(resolve_names([*args, "--print_config"]))
    except ArgumentError as error:  # the parsers raise instead of exiting (exit_on_error off)
        raise BenchError(f"invalid arguments: {summarize_argument_error(str(error))}") from None
    except SystemExit as exit:
        if exit.code not in (0, None):
            # jsonargparse prints the usage, then "error: ..." and its indented explanation
            text = errors.getvalue()
            start = text.find("error:") + len("error:") if "error:" in text else 0
            problem = " ".join(line.strip() for line in text[start:].splitlines() if line.strip())
            raise BenchError(f"invalid arguments: {problem[:600] or 'exit code ' + str(exit.code)}") from None
    config = yaml.safe_load(printed.getvalue())
    if not isinstance(config, dict):
        raise BenchError(f"`bench fit {' '.join(args)} --print_config` printed no configuration")
    return config


def point_key(config: dict[str, Any]) -> str:
    """SHA-256 of a resolved configuration, independent of key order (the sweep's own plumbing left out)."""
    settings = {key: value for key, value in config.items() if key not in ("sweep_point", "sweep_cache")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def describe(args: Sequence[str]) -> str:
    """A point's arguments for people: shipped configs by name, the rest as given."""
    from bench.registry import CONFIG_DIR

    shown = []
    for arg in args[1:] if args and args[0] == "fit" else args:
        path = Path(arg)
        if path.suffix in (".yaml", ".yml") and path.is_absolute() and path.is_relative_to(CONFIG_DIR):
            arg = path.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        shown.append(arg)
    return " ".join(shown)


def device_count(devices: Any, where: str) -> int:
    """How many slots a point's ``trainer.devices`` takes on a node (``auto`` and -1: the one slot it is given)."""
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return 1
        if "," in text:
            devices = [part for part in text.split(",") if part.strip()]
        elif text.isdigit():
            devices = int(text)
    if isinstance(devices, bool):
        raise BenchError(f"{where}: trainer.devices must be a count, not {devices}")
    if isinstance(devices, int):
        return max(devices, 1)
    if isinstance(devices, (list, tuple)):
        raise BenchError(
            f"{where} asks for the devices {list(devices)} by id; under `bench sweep` give a count "
            f"(--trainer.devices {len(devices)}): the sweep chooses the GPUs and sets CUDA_VISIBLE_DEVICES"
        )
    raise BenchError(f"{where}: cannot read trainer.devices={devices!r}; give a count")


@dataclass
class Point:
    """One grid point: its ``bench fit`` arguments, resolved configuration, key and run folder."""

    number: int  #: 1-based position in the sweep (for messages only; the key identifies the point)
    args: list[str]  #: ``fit --config ... --key value ...`` as the sweep file and the command line give them
    config: dict[str, Any]
    key: str
    run_dir: Path  #: stable across reruns: ``<log dir>/<readable name>-<key prefix>``
    shared: int = 0  #: how many trailing ``args`` the command line added to every point (not shown in labels)
    sweep: str = ""  #: the sweep's name: the point's W&B group

    @property
    def label(self) -> str:
        return describe(self.args[: len(self.args) - self.shared])

    @property
    def wandb_name(self) -> str:
        """The point's W&B run name: its config and grid settings, e.g. ``ran/mnist model.lam=0.5``."""
        return settings_name(self.args[: len(self.args) - self.shared])

    def wandb_arguments(self) -> list[str]:
        """``--trainer.logger`` group and name for a W&B logger the point's config does not name itself."""
        logger = (self.config.get("trainer") or {}).get("logger")
        if not isinstance(logger, dict) or logger.get("class_path") not in WANDB_LOGGERS or not self.sweep:
            return []  # no logger, several, or another kind: left as the user configured them
        given = logger.get("init_args") or {}
        arguments = [] if given.get("group") else ["--trainer.logger.init_args.group", self.sweep]
        return arguments + ([] if given.get("name") else ["--trainer.logger.init_args.name", self.wandb_name])

    @property
    def devices(self) -> int:
        return device_count(
            (self.config.get("trainer") or {}).get("devices", "auto"), f"sweep point {self.number} ({self.label})"
        )

    @property
    def num_nodes(self) -> int:
        return int((self.config.get("trainer") or {}).get("num_nodes") or 1)

    @property
    def records_dir(self) -> str:
        return (self.config.get("evaluation") or {}).get("records_dir") or "leaderboard/records"

    @property
    def leaderboard_dir(self) -> Optional[str]:
        return (self.config.get("evaluation") or {}).get("leaderboard_dir")

    @property
    def evaluates(self) -> bool:
        return (self.config.get("evaluation") or {}).get("enabled", True) is not False

    @property
    def checkpointing(self) -> bool:
        return (self.config.get("trainer") or {}).get("enable_checkpointing") is not False

    @property
    def log(self) -> Path:
        return self.run_dir / "fit.log"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_SUBDIR / "last.ckpt"

    def command(self, resume: bool, regenerate_leaderboard: bool = False) -> list[str]:
        """The process to start: ``bench fit`` with the point's arguments and the sweep's plumbing.

        The plumbing: the key (kept in the record, so a rerun finds it), the cache folder the points share (their
        shadow pools and fitted decoders, each under its full key), a checkpoint callback writing ``last.ckpt`` into
        the point's own folder (so a requeued or rerun point resumes from it), and no leaderboard per point (the
        sweep regenerates it once at the end).
        """
        command = [
            sys.executable,
            "-m",
            "bench.cli",
            *self.args,
            "--sweep_point",
            self.key,
            "--sweep_cache",  # shadow pools and decoders shared by the sweep's points (`shadow_cache: auto`)
            str(self.run_dir.parent / "shadow_cache"),
            "--trainer.default_root_dir",
            str(self.run_dir),  # concurrent points never share a log version
            *self.wandb_arguments(),
        ]
        if not regenerate_leaderboard:
            command += ["--evaluation.leaderboard_dir", "null"]
        if self.checkpointing:
            checkpoint = {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(self.run_dir / CHECKPOINT_SUBDIR), "save_last": "link"},
            }
            command.append("--trainer.callbacks+=" + json.dumps(checkpoint))
        if resume and self.last_checkpoint.exists():
            command += ["--ckpt_path", str(self.last_checkpoint)]
        return command


def settings_name(args: Sequence[str]) -> str:
    """A point's arguments as a short name: ``--config ran/mnist --model.lam 0.5`` is ``ran/mnist model.lam=0.5``."""
    import yaml

    shown = [describe([arg]) for arg in (args[1:] if args and args[0] == "fit" else args)]
    words, index = [], 0
    while index < len(shown):
        option, value = shown[index], shown[index + 1] if index + 1 < len(shown) else None
        takes_value = option.startswith("--") and "=" not in option and value is not None and not value.startswith("--")
        if takes_value:
            words.append(value if option in ("--config", "-c") else f"{option[2:]}={value}")
        else:
            words.append(option.lstrip("-"))
        index += 2 if takes_value else 1
    name = " ".join(words)[:128]
    try:  # the command line reads it as YAML: a name that would read as anything but itself gets plain characters
        plain = yaml.safe_load(name) == name
    except yaml.YAMLError:
        plain = False
    return name if plain else re.sub(r"[^A-Za-z0-9_.=/, -]+", "_", name)


def _folder_name(args: Sequence[str], key: str) -> str:
    shown = describe(args).replace("--config ", "", 1).replace("--", "")
    readable = re.sub(r"[^A-Za-z0-9_.=-]+", "_", shown).strip("_.")
    return f"{readable[:80]}-{key[:10]}"


def load_points(sweep_path: str, extra_args: Sequence[str], log_dir: Path) -> list[Point]:
    """Every point of a sweep file with ``extra_args`` added to each, resolved.

    Bad arguments fail here, before any run.
    """
    points = []
    for number, args in enumerate(expand_sweep(sweep_path), 1):
        args = [*args, *extra_args]
        try:
            config = resolve_config(args)
        except BenchError as error:
            raise BenchError(f"sweep point {number} ({describe(args)}): {error}") from None
        key = point_key(config)
        grid_args = args[: len(args) - len(extra_args)]
        points.append(
            Point(
                number,
                args,
                config,
                key,
                log_dir / _folder_name(grid_args, key),
                len(extra_args),
                Path(sweep_path).stem,
            )
        )
    keys = [point.key for point in points]
    for point in points:
        if keys.count(point.key) > 1:
            raise BenchError(
                f"sweep point {point.number} ({point.label}) has the same settings as another point; "
                "remove the duplicate from the sweep"
            )
    return points


def records_by_key(points: Sequence[Point]) -> dict[str, list[Path]]:
    """The valid records (``bench.records`` validation) that ``bench fit`` wrote for these points, oldest first.

    Records of ``bench evaluate`` (their config names the checkpoint they re-evaluated) do not count:
    they may use other attacks than the point.
    """
    from bench.records import load_records

    wanted = {point.key for point in points}
    loaded = load_records(sorted({point.records_dir for point in points}))
    found: dict[str, list[Path]] = {}
    for record, path in sorted(
        zip(loaded.records, loaded.paths), key=lambda pair: (pair[0].get("created") or "", str(pair[1]))
    ):
        config = record.get("config") or {}
        key = config.get("sweep_point")
        if key in wanted and "checkpoint" not in config:
            found.setdefault(key, []).append(path)
    return found


def finished_records(points: Sequence[Point]) -> dict[str, Path]:
    """The newest valid record of each point that has one, by key: a rerun of the sweep skips these points."""
    return {key: paths[-1] for key, paths in records_by_key(points).items()}
