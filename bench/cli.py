"""The ``bench`` command.

``bench fit | validate | test | predict`` are LightningCLI subcommands (subclass mode: ``--model``
and ``--data`` take a registered class name or a class path; ``--config`` takes a YAML file or the
name of a shipped config). ``bench evaluate`` runs the privacy harness on a saved checkpoint,
``bench leaderboard`` regenerates tables and plots from result records, and ``bench list`` shows
what the suite has. Plain ``bench fit`` runs the quickstart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.errors import BenchError, class_path

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
DEFAULTS = Path(__file__).parent / "configs" / "defaults.yaml"
QUICKSTART = Path(__file__).parent / "configs" / "quickstart.yaml"
CHOOSERS = ("--config", "-c", "--model", "--data")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command = argv[0] if argv else None
        if command == "evaluate":
            evaluate_command(argv[1:])
        elif command == "leaderboard":
            leaderboard_command(argv[1:])
        elif command == "list":
            list_command(argv[1:])
        elif command == "sweep":
            sweep_command(argv[1:])
        elif command in LIGHTNING_SUBCOMMANDS or command in ("-h", "--help", "--version", None):
            run_lightning_cli(_resolve_names(_with_quickstart(argv)) if argv else ["--help"])
        else:
            raise BenchError(f"unknown command '{command}'; commands: {', '.join(LIGHTNING_SUBCOMMANDS)}, evaluate, leaderboard, list, sweep")
    except Exception as error:
        cause = _bench_error_in_chain(error)
        if cause is None:
            raise
        print(f"bench: error: {cause}", file=sys.stderr)
        sys.exit(1)


def _bench_error_in_chain(error: BaseException) -> Optional[BenchError]:
    """The BenchError behind ``error``: jsonargparse and Lightning re-raise user errors wrapped."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, BenchError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# ---------------------------------------------------------------------- LightningCLI
def _with_quickstart(argv: list[str]) -> list[str]:
    """Plain ``bench fit`` runs the quickstart; a lone --model or --data gets the default other half.

    Neither is a default underneath other choices: jsonargparse keeps a class's init arguments when
    another class is chosen on top, so the quickstart's ``lr`` or attack settings would leak into them.
    """
    if argv[0] not in LIGHTNING_SUBCOMMANDS:
        return argv
    given = {arg.partition("=")[0] for arg in argv[1:]} & set(CHOOSERS)
    if not given:
        return [argv[0], f"--config={QUICKSTART}", *argv[1:]]
    if given & {"--config", "-c"}:
        return argv
    missing = [] if "--model" in given else ["--model=SplitNetwork"]
    missing += [] if "--data" in given else ["--data=Digits"]
    return [argv[0], *missing, *argv[1:]]


def _resolve_names(argv: list[str]) -> list[str]:
    """Shipped config names become paths; unknown --model/--data names fail with the list of known ones."""
    from bench import registry

    resolved, index = [], 0
    while index < len(argv):
        arg = argv[index]
        key, has_value, value = arg.partition("=")
        if key in CHOOSERS and not has_value and index + 1 < len(argv):
            value, has_value, index = argv[index + 1], True, index + 1
        if key in ("--config", "-c") and has_value:
            # a config's `compose:` pieces are applied before it, as if given first on the command line
            resolved.extend(f"--config={path}" for path in registry.composed_configs(value))
            index += 1
            continue
        elif key in ("--model", "--data") and has_value:
            if not value.lstrip().startswith(("{", "[")) and not Path(value).suffix in (".yaml", ".yml", ".json"):
                kind = "method" if key == "--model" else "datamodule"
                cls = registry.resolve_class(kind, value, allow_import=True)  # the user typed it: may be their own package
                value = f"{cls.__module__}.{cls.__qualname__}"
            arg = f"{key}={value}"
        resolved.append(arg)
        index += 1
    return resolved


def _add_compose_argument(parser) -> None:
    # `bench` applies a config's pieces before jsonargparse reads it (_resolve_names); the key itself stays a record
    parser.add_argument("--compose", type=Optional[list[str]], default=None,
                        help="the shipped pieces (or YAML files) a config is composed of, applied before it (see `bench list`)")


def run_lightning_cli(argv: list[str]):
    from lightning.pytorch.cli import LightningCLI

    import bench.attacks  # noqa: F401  (attack classes become choosable by name)
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation
    from bench.datamodules.base import PrivacyDataModule
    from bench.modules.base import PrivacyModule

    class BenchCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(PrivacyEvaluation, "evaluation")
            parser.add_argument("--sweep_point", type=Optional[str], default=None,
                                help="set by `bench sweep`: the grid point's key, kept in the record so a rerun skips the point")
            _add_compose_argument(parser)
            # networks adapt to the dataset: the DataModule's spec is handed to the method
            parser.link_arguments("data", "model.init_args.data_spec", compute_fn=lambda data: data.spec,
                                  apply_on="instantiate")

        def before_fit(self) -> None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, PrivacyEvaluation):
                    callback.run_config = _plain(self.config.get(self.subcommand, self.config))

    default_config = {subcommand: {"default_config_files": [str(DEFAULTS)]} for subcommand in LIGHTNING_SUBCOMMANDS}
    # LightningCLI reads sys.argv (DDP re-launches the same command line on the other ranks)
    saved_argv, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "bench", *argv]
    try:
        return BenchCLI(
            PrivacyModule, PrivacyDataModule, subclass_mode_model=True, subclass_mode_data=True,
            seed_everything_default=0, save_config_kwargs={"overwrite": True}, parser_kwargs=default_config,
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved_argv


def _plain(namespace: Any) -> Any:
    """A jsonargparse Namespace (with class paths and init args) as plain JSON-able data."""
    if hasattr(namespace, "as_dict"):
        namespace = namespace.as_dict()
    if isinstance(namespace, dict):
        return {key: _plain(value) for key, value in namespace.items() if not key.startswith("__")}
    if isinstance(namespace, (list, tuple)):
        return [_plain(value) for value in namespace]
    if isinstance(namespace, (str, int, float, bool)) or namespace is None:
        return namespace
    return str(namespace)


# ---------------------------------------------------------------------- bench evaluate
def evaluate_command(argv: list[str]) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    import bench.attacks  # noqa: F401
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation

    parser = ArgumentParser(prog="bench evaluate", description="Run the privacy harness on a checkpoint written by `bench fit`.")
    parser.add_argument("checkpoint", type=str, help="path of the .ckpt file")
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(PrivacyEvaluation, "evaluation")
    _add_compose_argument(parser)
    parser.add_argument("--data_dir", type=Optional[str], default=None, help="where the dataset lives now (default: as trained)")
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    args = parser.parse_args(_resolve_names(argv))
    init = parser.instantiate_classes(args)
    module, datamodule, checkpoint = load_checkpoint(args.checkpoint, data_dir=args.data_dir, device=args.device)
    run_config = checkpoint.get("run_config") or {
        "model": {"class_path": checkpoint["method_class"], "init_args": dict(module.hparams)},
        "data": {"class_path": checkpoint["datamodule_class"], "init_args": dict(datamodule.hparams)}}
    evaluation = init.evaluation
    trained_with = (run_config.get("evaluation") or {}).get("attacks")
    if evaluation.attacks is None and trained_with:
        # unless told otherwise, attack the checkpoint exactly as its run was attacked, so the records compare
        evaluation.attacks = [_instantiate(spec) for spec in trained_with]
    epoch = checkpoint.get("epoch")
    config = {**run_config, "checkpoint": str(Path(args.checkpoint).resolve()),
              "training": {"epochs": None if epoch is None else epoch + 1, "global_step": checkpoint.get("global_step")},
              "evaluation": {**_plain(args.evaluation), "attacks": [_describe(a) for a in evaluation.attacks or []] or None}}
    evaluation.evaluate_and_record(module, datamodule, config=config)


def _instantiate(spec: dict[str, Any]):
    """A class from its LightningCLI form {class_path, init_args}."""
    import importlib

    module_name, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), name)(**(spec.get("init_args") or {}))


def _describe(attack) -> dict[str, Any]:
    return {"class_path": class_path(attack), "init_args": attack.config()}


def load_checkpoint(path: str, data_dir: Optional[str] = None, device: str = "auto"):
    """Rebuild the method and its DataModule from a checkpoint written by ``bench fit``."""
    import importlib

    import torch

    file = Path(path)
    if not file.is_file():
        raise BenchError(f"checkpoint {path} not found; `bench fit` writes them under the run folder it prints (checkpoints/*.ckpt)")
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise BenchError(f"cannot read checkpoint {path} ({type(error).__name__}: {str(error).splitlines()[0][:160]}); "
                         "is it a complete .ckpt written by `bench fit`?") from error
    info = raw.get("bench") if isinstance(raw, dict) else None
    if not info or "datamodule_class" not in info:
        raise BenchError(f"{path} is not a bench checkpoint (no method/datamodule information); train it with `bench fit`")

    def import_class(dotted: str):
        module_name, _, name = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as error:
            raise BenchError(f"{path} was written by class {dotted}, which cannot be imported here ({error})") from error

    method_cls, datamodule_cls = import_class(info["method_class"]), import_class(info["datamodule_class"])
    hparams = {key: value for key, value in info.get("datamodule_hparams", {}).items() if not key.startswith("_")}
    if data_dir is not None:
        hparams["data_dir"] = data_dir
    datamodule = datamodule_cls(**hparams)
    try:
        module = method_cls.load_from_checkpoint(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BenchError(f"cannot restore {info['method_class']} from {path} ({type(error).__name__}: {error})") from error
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return module.to(device), datamodule, {**info, "epoch": raw.get("epoch"), "global_step": raw.get("global_step")}


# ---------------------------------------------------------------------- bench leaderboard
def leaderboard_command(argv: list[str]) -> None:
    import argparse

    from bench.leaderboard import generate_leaderboard

    parser = argparse.ArgumentParser(prog="bench leaderboard", description="Regenerate leaderboard tables and plots from result records.")
    parser.add_argument("--records", nargs="+", default=["leaderboard/records"], help="record files or folders")
    parser.add_argument("--out", default="leaderboard", help="output folder (README.md, leaderboard.csv, plots/)")
    parser.add_argument("--include_degenerate", action="store_true", help="also rank runs flagged degenerate (at chance accuracy)")
    args = parser.parse_args(argv)
    missing = [location for location in args.records if not Path(location).exists()]
    if missing:
        raise BenchError(f"no records at {', '.join(missing)}; `bench fit` writes records to leaderboard/records by default")
    result = generate_leaderboard(args.records, args.out, include_degenerate=args.include_degenerate)
    for file, problem in result.problems:
        print(f"bench: warning: skipped {file}: {problem}", file=sys.stderr)
    print(f"bench: leaderboard of {result.rows} rows written to {result.markdown} ({result.csv}, {len(result.plots)} plots)")


# ---------------------------------------------------------------------- bench sweep
def sweep_command(argv: list[str]) -> None:
    from bench.sweeps.launch import sweep_command as run_sweep  # the logic lives in bench/sweeps/

    run_sweep(argv)


# ---------------------------------------------------------------------- bench list
def list_command(argv: list[str]) -> None:
    from bench import registry

    if argv:
        raise BenchError("`bench list` takes no arguments")

    def first_line(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    print("Methods (--model):")
    for name, cls in registry.methods().items():
        threats = ", ".join(threat.value for threat in cls.threat_models)
        print(f"  {name:<22} [{threats}] {first_line(cls)}")
    print("\nDataModules (--data):")
    for name, cls in registry.datamodules().items():
        shape = "x".join(map(str, cls.image_shape)) if "image_shape" in cls.__dict__ else "from files"
        print(f"  {name:<22} {shape:<10} {first_line(cls)}")
    print("\nAttacks (--evaluation.attacks):")
    for name, cls in registry.attacks().items():
        print(f"  {name:<22} [{cls.threat_model.value}] {first_line(cls)}")
    print("\nShipped configs (--config NAME):")
    for name, path in registry.configs().items():
        print(f"  {name:<30} {path}")
    print("\nConfig pieces (`compose:` in a config, or --config NAME):")
    for name, path in registry.pieces().items():
        print(f"  {name:<30} {path}")
    print("\nShipped sweeps (bench sweep NAME):")
    for name, path in registry.sweeps().items():
        print(f"  {name:<30} {path}")


if __name__ == "__main__":
    main()
