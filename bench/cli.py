"""The ``bench`` command.

``bench fit | validate | test | predict`` are LightningCLI subcommands (subclass mode: ``--model``
and ``--data`` take a registered class name or a class path; ``--config`` takes a YAML file or the
name of a shipped config). ``bench evaluate`` runs the privacy harness on a saved checkpoint,
``bench leaderboard`` regenerates tables and plots from result records, and ``bench list`` shows
what the suite has. Plain ``bench fit`` runs the quickstart.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench.checkpoints import describe_attack, instantiate_attack, load_checkpoint  # noqa: F401  (bench.cli.load_checkpoint)
from bench.errors import BenchError, CommandLineParser, regular_file
from bench.lightning_cli import (  # noqa: F401
    DEFAULTS,
    LIGHTNING_SUBCOMMANDS,
    QUICKSTART,
    add_compose_argument,
    plain,
    resolve_names,
    run_lightning_cli,
    summarize_argument_error,
    with_quickstart,
)

COMMANDS = (*LIGHTNING_SUBCOMMANDS, "evaluate", "audit", "leaderboard", "list", "sweep")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]
    try:
        command = argv[0] if argv else None
        if command in ("-h", "--help", None):
            print(HELP)
            return
        _check_config_files(argv)
        if command == "evaluate":
            evaluate_command(argv[1:])
        elif command == "audit":
            audit_command(argv[1:])
        elif command == "leaderboard":
            leaderboard_command(argv[1:])
        elif command == "list":
            list_command(argv[1:])
        elif command == "sweep":
            sweep_command(argv[1:])
        elif command in LIGHTNING_SUBCOMMANDS or command == "--version":
            run_lightning_cli(resolve_names(with_quickstart(argv)))
        else:
            close = difflib.get_close_matches(str(command), COMMANDS, n=1)
            raise BenchError(
                f"unknown command '{command}'"
                + (f"; did you mean '{close[0]}'?" if close else "")
                + f" commands: {', '.join(COMMANDS)} (bench --help)"
            )
    except Exception as error:
        from jsonargparse import ArgumentError

        cause = _bench_error_in_chain(error)
        if isinstance(error, ArgumentError) and cause is None:
            message = str(error)
            print(
                f"bench: error: {summarize_argument_error(message)}"
                + ("" if verbose else " (--verbose: the full message)"),
                file=sys.stderr,
            )
            if verbose:
                print(message, file=sys.stderr)
            sys.exit(2)
        cause = cause or _user_error(error)
        if cause is None:
            raise
        print(f"bench: error: {cause}", file=sys.stderr)
        if verbose:
            import traceback

            traceback.print_exception(error)
        sys.exit(cause.exit_code)


def _user_error(error: BaseException) -> Optional[BenchError]:
    """Errors of the user's settings or files that arrive as library exceptions, as one line of advice (else None)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from bench.lightning_cli import lightning_refused

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MisconfigurationException):
            return lightning_refused(error)
        if isinstance(error, OSError) and error.filename is not None:
            # a folder or file the run must write or read: not there, not writable, or a file where a folder must be
            return BenchError(
                f"cannot use {error.filename}: {error.strerror or error}; check the path (and its "
                "permissions) in the options or config that name it"
            )
        error = error.__cause__ or error.__context__
    return None


HELP = """usage: bench COMMAND [options]   (bench COMMAND --help for its options)

Train, attack and compare privacy-preserving methods.

commands:
  fit          train a method (plain `bench fit`: the quickstart), then run the privacy harness and write a record
  validate     validate a method on the val pool (--ckpt_path a checkpoint)
  test         test a method on the test pool (--ckpt_path a checkpoint)
  predict      predict on the test pool (--ckpt_path a checkpoint)
  evaluate     run the privacy harness on a checkpoint written by `bench fit`
  audit        audit a classifier trained elsewhere, or saved scores (docs/auditing_a_model.md)
  leaderboard  regenerate leaderboard tables, CSV and plots from result records
  list         list the methods, DataModules, attacks, shipped configs and sweeps
  sweep        run every point of a sweep, one `bench fit` each

options:
  -h, --help   this message
  --verbose    on an error, the full parser message or traceback after the one-line summary

Results go to runs/ (logs, checkpoints, W&B) and runs/leaderboard/ (records, your leaderboard); the shipped
leaderboard (leaderboard/) changes only with --evaluation.records_dir leaderboard/records."""


def _check_config_files(argv: list[str]) -> None:
    """A --config file that is not valid YAML: one line naming the file, line and column.

    (jsonargparse would say "<unicode string>".)
    """
    import yaml

    from bench import registry

    for index, arg in enumerate(argv):
        key, has_value, value = arg.partition("=")
        if key not in ("--config", "-c"):
            continue
        if not has_value:
            if index + 1 >= len(argv):
                continue
            value = argv[index + 1]
        path = regular_file(registry.resolve_config(value), "config")  # a FIFO would block the read forever
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise BenchError(f"{path}{where}: not valid YAML ({problem})") from None
        except OSError as error:
            raise BenchError(f"cannot read config {path}: {error.strerror or error}") from None


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
def evaluate_command(argv: list[str]) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    import bench.attacks  # noqa: F401
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation
    from bench.evaluator import evaluation_device
    from bench.records import run_facts_from_config

    parser = ArgumentParser(
        prog="bench evaluate",
        description="Run the privacy harness on a checkpoint written by `bench fit`.",
        exit_on_error=False,
    )
    parser.add_argument("checkpoint", type=str, help="path of the .ckpt file")
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(PrivacyEvaluation, "evaluation")
    add_compose_argument(parser)
    parser.add_argument(
        "--data_dir", type=Optional[str], default=None, help="where the dataset lives now (default: as trained)"
    )
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    parser.add_argument(
        "--model",
        type=Optional[str],
        default=None,
        help="class path of your own method, to import it (default: the checkpoint's, if registered)",
    )
    parser.add_argument(
        "--data",
        type=Optional[str],
        default=None,
        help="class path of your own DataModule, to import it (default: the checkpoint's, if registered)",
    )
    args = parser.parse_args(resolve_names(argv))
    device = evaluation_device(args.device)
    init = parser.instantiate_classes(args)
    module, datamodule, checkpoint = load_checkpoint(
        args.checkpoint, data_dir=args.data_dir, device=device, method=args.model, datamodule=args.data
    )
    run_config = checkpoint.get("run_config")
    if not isinstance(run_config, dict):
        run_config = {
            "model": {"class_path": checkpoint["method_class"], "init_args": dict(module.hparams)},
            "data": {"class_path": checkpoint["datamodule_class"], "init_args": dict(datamodule.hparams)},
        }
    # --evaluation.shadow_cache auto: shadow pools kept beside the checkpoint, for a rerun or other attack settings
    init.evaluation.run_root = str(Path(args.checkpoint).resolve().parent)
    evaluator = init.evaluation.evaluator()
    trained_with = (
        run_config.get("evaluation").get("attacks") if isinstance(run_config.get("evaluation"), dict) else None
    )
    if trained_with is not None and not isinstance(trained_with, list):
        raise BenchError(
            f"{args.checkpoint}: run_config.evaluation.attacks must be a list, got {type(trained_with).__name__}"
        )
    if evaluator.attacks is None and trained_with:
        # unless told otherwise, attack the checkpoint exactly as its run was attacked, so the records compare
        evaluator.attacks = [
            instantiate_attack(spec, f"{args.checkpoint}: run_config.evaluation.attacks[{index}]")
            for index, spec in enumerate(trained_with)
        ]
    epoch = checkpoint.get("epoch")
    training = {"epochs": None if epoch is None else epoch + 1, "global_step": checkpoint.get("global_step")}
    config = {
        **run_config,
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "training": training,
        "evaluation": {
            **plain(args.evaluation),
            "attacks": [describe_attack(a) for a in evaluator.attacks or []] or None,
        },
    }
    if training["global_step"] == 0 and not evaluator.allow_untrained:  # the checks `bench fit` made before training
        raise BenchError(
            "the checkpoint is of a model that took no optimizer step, and an untrained model is not "
            "a result; --evaluation.allow_untrained true evaluates it anyway"
        )
    evaluator.check_preconditions(module, datamodule)
    outcome = evaluator.run(
        module, datamodule, config=config, training=training, run=run_facts_from_config(run_config, training)
    )
    evaluator.refresh_leaderboard(outcome)
    print(outcome.summary(), flush=True)
    if not outcome.complete:
        raise outcome.incomplete_error()


# ---------------------------------------------------------------------- bench audit
def audit_command(argv: list[str]) -> None:
    from bench.audit.command import audit_command as run_audit  # the logic lives in bench/audit/

    run_audit(argv)


# ---------------------------------------------------------------------- bench leaderboard
def leaderboard_command(argv: list[str]) -> None:
    from bench.leaderboard import generate_leaderboard
    from bench.records import DEFAULT_LEADERBOARD_DIR, DEFAULT_RECORDS_DIR

    parser = CommandLineParser(
        prog="bench leaderboard",
        description="Regenerate leaderboard tables and plots from result records.",
        epilog=f"Without arguments: your own results ({DEFAULT_RECORDS_DIR} -> {DEFAULT_LEADERBOARD_DIR}), "
        "where `bench fit` writes them. "
        "The leaderboard shipped with the suite: `bench leaderboard --records leaderboard/records`.",
    )
    parser.add_argument("--records", nargs="+", default=[DEFAULT_RECORDS_DIR], help="record files or folders")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (README.md, leaderboard.csv, plots/); default: the "
        "folder holding the records folder (e.g. leaderboard for leaderboard/records)",
    )
    parser.add_argument(
        "--include_degenerate", action="store_true", help="also rank runs flagged degenerate (at chance accuracy)"
    )
    args = parser.parse_args(argv)
    missing = [location for location in args.records if not Path(location).exists()]
    if missing:
        raise BenchError(
            f"no records at {', '.join(missing)}; `bench fit` writes records to {DEFAULT_RECORDS_DIR} by default"
        )
    first = Path(args.records[0])
    out = args.out or (first.parent if first.is_dir() and first.name == "records" else DEFAULT_LEADERBOARD_DIR)
    result = generate_leaderboard(args.records, out, include_degenerate=args.include_degenerate)
    for file, problem in result.problems:
        print(f"bench: warning: skipped {file}: {problem}", file=sys.stderr)
    print(
        f"bench: leaderboard of {result.rows} rows written to {result.markdown} "
        f"({result.csv}, {len(result.plots)} plots)"
    )


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
    print("\nNetworks (--model.network; bench/networks/registry.py), by role:")
    from bench.networks.registry import Role, network_names

    for role in Role:
        print(f"  {role.value:<22} {', '.join(network_names(role))}")
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
