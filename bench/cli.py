"""The ``bench`` command.

``bench fit | validate | test | predict`` are LightningCLI subcommands (subclass mode: ``--model``
and ``--data`` take a registered class name or a class path; ``--config`` takes a YAML file or the
name of a shipped config). ``bench evaluate`` runs the privacy harness on a saved checkpoint,
``bench leaderboard`` regenerates tables and plots from result records, and ``bench list`` shows
what the suite has. Plain ``bench fit`` runs the quickstart.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from bench.errors import BenchError, class_path

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
COMMANDS = (*LIGHTNING_SUBCOMMANDS, "evaluate", "leaderboard", "list", "sweep")
DEFAULTS = Path(__file__).parent / "configs" / "defaults.yaml"
QUICKSTART = Path(__file__).parent / "configs" / "quickstart.yaml"
CHOOSERS = ("--config", "-c", "--model", "--data")
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself


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
        elif command == "leaderboard":
            leaderboard_command(argv[1:])
        elif command == "list":
            list_command(argv[1:])
        elif command == "sweep":
            sweep_command(argv[1:])
        elif command in LIGHTNING_SUBCOMMANDS or command == "--version":
            run_lightning_cli(_resolve_names(_with_quickstart(argv)))
        else:
            close = difflib.get_close_matches(str(command), COMMANDS, n=1)
            raise BenchError(f"unknown command '{command}'" + (f"; did you mean '{close[0]}'?" if close else "")
                             + f" commands: {', '.join(COMMANDS)} (bench --help)")
    except Exception as error:
        from jsonargparse import ArgumentError

        cause = _bench_error_in_chain(error)
        if isinstance(error, ArgumentError) and cause is None:
            message = str(error)
            print(f"bench: error: {_summarize_argument_error(message)}" + ("" if verbose else " (--verbose: the full message)"),
                  file=sys.stderr)
            if verbose:
                print(message, file=sys.stderr)
            sys.exit(2)
        if cause is None:
            raise
        print(f"bench: error: {cause}", file=sys.stderr)
        if verbose:
            import traceback

            traceback.print_exception(error)
        sys.exit(1)


HELP = """usage: bench COMMAND [options]   (bench COMMAND --help for its options)

Train, attack and compare privacy-preserving methods.

commands:
  fit          train a method (plain `bench fit`: the quickstart), then run the privacy harness and write a record
  validate     validate a method on the val pool (--ckpt_path a checkpoint)
  test         test a method on the test pool (--ckpt_path a checkpoint)
  predict      predict on the test pool (--ckpt_path a checkpoint)
  evaluate     run the privacy harness on a checkpoint written by `bench fit`
  leaderboard  regenerate leaderboard tables, CSV and plots from result records
  list         list the methods, DataModules, attacks, shipped configs and sweeps
  sweep        run every point of a sweep, one `bench fit` each

options:
  -h, --help   this message
  --verbose    on an error, the full parser message or traceback after the one-line summary

Results go to runs/ (logs, checkpoints, W&B) and runs/leaderboard/ (records, your leaderboard); the shipped
leaderboard (leaderboard/) changes only with --evaluation.records_dir leaderboard/records."""


def _check_config_files(argv: list[str]) -> None:
    """A --config file that is not valid YAML: one line naming the file, line and column (jsonargparse says "<unicode string>")."""
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
        path = Path(registry.resolve_config(value))
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise BenchError(f"{path}{where}: not valid YAML ({problem})") from None
        except OSError as error:
            raise BenchError(f"cannot read config {path}: {error.strerror or error}") from None


def _summarize_argument_error(message: str) -> str:
    """The one useful line of a jsonargparse error: what was wrong, where, and the closest valid names."""
    import re

    from bench import registry

    key = re.search(r'Parser key "([^"]+)"', message)
    option = re.search(r"Option '([^']+)' is not accepted", message)
    given_class = re.search(r"Problem with given class_path '([^']+)'", message)
    if option and given_class:
        accepted = _init_arguments(given_class.group(1))
        close = difflib.get_close_matches(option.group(1), accepted, n=3)
        where = f"--{key.group(1)}.{option.group(1)}" if key else option.group(1)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return (f"{where}: {given_class.group(1).rsplit('.', 1)[-1]} has no argument '{option.group(1)}'{hint} "
                f"(its arguments: {', '.join(accepted)})")
    bad_class = re.search(r"(?:Expected a dot import path string: |Import path |No module named |class_path[:=] ?)'?([\w.]+)'?", message)
    if key and bad_class:
        kind = {"model": "method", "data": "datamodule"}.get(key.group(1).split(".")[0], "attack")
        table = {"method": registry.methods, "datamodule": registry.datamodules, "attack": registry.attacks}[kind]()
        name = bad_class.group(1)
        close = difflib.get_close_matches(name.rsplit(".", 1)[-1], list(table), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"--{key.group(1)}: unknown {kind} class '{name}'{hint} (available: {', '.join(table)})"
    unrecognized = re.search(r"[Uu]nrecognized arguments: (.*)", message)
    if unrecognized:
        return f"unrecognized arguments: {unrecognized.group(1).strip()} (bench COMMAND --help lists the options)"
    expected = re.findall(r"Expected a <class '([\w.]+)'>", message)
    given = re.search(r"Given value: (.*)", message)
    if key and expected and given:
        names = " or ".join("null" if name == "NoneType" else name.rsplit(".", 1)[-1] for name in expected)
        return f"--{key.group(1)}: expected {names}, got {given.group(1).strip()!r}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[0] if lines else message


def _init_arguments(dotted: str) -> list[str]:
    """The init arguments of an already-imported class (nothing is imported here)."""
    import inspect

    module_name, _, name = dotted.rpartition(".")
    cls = getattr(sys.modules.get(module_name), name, None)
    if not isinstance(cls, type):
        return []
    names: list[str] = []
    for klass in cls.__mro__:  # **kwargs reach the base classes' arguments
        if "__init__" in klass.__dict__:
            names += [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "args", "kwargs")
                      and p not in names and p != "data_spec"]
    return names


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


def _quiet_lightning() -> None:
    """No adverts and no deprecation noise from the libraries under every run: the output is the run's."""
    import logging
    import warnings

    def no_adverts(record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(no_adverts)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


def run_lightning_cli(argv: list[str]):
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.cli import LightningCLI

    import bench.attacks  # noqa: F401  (attack classes become choosable by name)
    from bench import registry
    from bench.callbacks.console import EpochLines, RunConfig
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation
    from bench.datamodules.base import PrivacyDataModule
    from bench.modules.base import PrivacyModule

    _quiet_lightning()

    class BenchCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(PrivacyEvaluation, "evaluation")
            parser.add_argument("--sweep_point", type=Optional[str], default=None,
                                help="set by `bench sweep`: the grid point's key, kept in the record so a rerun skips the point")
            _add_compose_argument(parser)
            # networks adapt to the dataset: the DataModule's spec is handed to the method
            parser.link_arguments("data", "model.init_args.data_spec", compute_fn=lambda data: data.spec,
                                  apply_on="instantiate")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI applies the checkpoint's hyper-parameters, class path included, to the model's config:
            # read the file safely first, and let it name only a registered method (nothing new is imported)
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
            self._checkpoint_methods: list[type] = []
            if ckpt_path is not None and str(ckpt_path) not in CKPT_PATH_KEYWORDS:
                self._checkpoint_methods = _check_resume_checkpoint(str(ckpt_path))
                configured = getattr(self.config[self.config.subcommand].get("model"), "class_path", None)
                try:  # jsonargparse imported the configured class already
                    configured_class = registry.resolve_class("method", configured) if isinstance(configured, str) else None
                except BenchError:
                    configured_class = None
                for method in self._checkpoint_methods:  # before Lightning applies its hyper-parameters to --model
                    if configured_class is not None and not issubclass(configured_class, method):
                        raise BenchError(f"--ckpt_path {ckpt_path} was written by {class_path(method)}, but this run's "
                                         f"--model is {configured}")
            super()._parse_ckpt_path()

        def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if kwargs.get("ckpt_path") is not None:
                for method in getattr(self, "_checkpoint_methods", []):
                    if not isinstance(self.model, method):
                        raise BenchError(f"--ckpt_path {kwargs['ckpt_path']} was written by {class_path(method)}, "
                                         f"but this run's --model is {class_path(self.model)}")
                kwargs["weights_only"] = True  # never unpickle objects from a checkpoint, whatever torch's default
            return kwargs

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
            given = config.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            if (config.get("enable_progress_bar") is not False and not sys.stderr.isatty()
                    and not any(isinstance(callback, ProgressBar) for callback in given)):
                # a bar redraws with carriage returns: in a log file or CI, one line per epoch instead
                config = {**config, "enable_progress_bar": False}
                callbacks = [*callbacks, EpochLines()]
            return super()._instantiate_trainer(config, callbacks)

        def before_fit(self) -> None:
            checkpoint = self.trainer.checkpoint_callback
            if checkpoint is not None and checkpoint.save_last is None:
                checkpoint.save_last = True  # checkpoints/last.ckpt, to resume or evaluate without knowing the step
            for callback in self.trainer.callbacks:
                if isinstance(callback, PrivacyEvaluation):
                    callback.run_config = _plain(self.config.get(self.subcommand, self.config))
                    callback.defer_summary = True  # printed by after_fit, after W&B's own closing lines

        def after_fit(self) -> None:
            summaries = [callback.summary for callback in self.trainer.callbacks
                         if isinstance(callback, PrivacyEvaluation) and callback.summary]
            if summaries and self.trainer.is_global_zero:
                import wandb

                if wandb.run is not None:
                    wandb.finish()  # its sync hint now, not after our summary at exit
                print("\n".join(summaries), flush=True)

    # exit_on_error off: a parser error is raised, and `main` prints its one useful line instead of 60 lines of usage
    default_config = {"exit_on_error": False,
                      **{subcommand: {"default_config_files": [str(DEFAULTS)], "exit_on_error": False}
                         for subcommand in LIGHTNING_SUBCOMMANDS}}
    # LightningCLI reads sys.argv (DDP re-launches the same command line on the other ranks)
    saved_argv, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "bench", *argv]
    try:
        return BenchCLI(
            PrivacyModule, PrivacyDataModule, subclass_mode_model=True, subclass_mode_data=True,
            seed_everything_default=0, save_config_callback=RunConfig, save_config_kwargs={"overwrite": True},
            parser_kwargs=default_config,
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved_argv


def _check_resume_checkpoint(path: str) -> list[type]:
    """``--ckpt_path`` must be a readable Lightning checkpoint naming only registered methods: those classes."""
    from bench import registry

    raw = read_checkpoint(path)
    hparams = raw.get("hyper_parameters")
    info = raw.get("bench") if isinstance(raw.get("bench"), dict) else {}
    named = [value for value in ((hparams or {}).get("_class_path") if isinstance(hparams, dict) else None,
                                 info.get("method_class")) if value is not None]
    methods = []
    for written in named:
        try:
            methods.append(registry.resolve_class("method", written))
        except BenchError as error:
            raise BenchError(f"--ckpt_path {path} names method class {written}: {error}") from None
    return methods


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

    parser = ArgumentParser(prog="bench evaluate", description="Run the privacy harness on a checkpoint written by `bench fit`.",
                            exit_on_error=False)
    parser.add_argument("checkpoint", type=str, help="path of the .ckpt file")
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(PrivacyEvaluation, "evaluation")
    _add_compose_argument(parser)
    parser.add_argument("--data_dir", type=Optional[str], default=None, help="where the dataset lives now (default: as trained)")
    parser.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    parser.add_argument("--model", type=Optional[str], default=None,
                        help="class path of your own method, to import it (default: the checkpoint's, if registered)")
    parser.add_argument("--data", type=Optional[str], default=None,
                        help="class path of your own DataModule, to import it (default: the checkpoint's, if registered)")
    args = parser.parse_args(_resolve_names(argv))
    init = parser.instantiate_classes(args)
    module, datamodule, checkpoint = load_checkpoint(args.checkpoint, data_dir=args.data_dir, device=args.device,
                                                     method=args.model, datamodule=args.data)
    run_config = checkpoint.get("run_config")
    if not isinstance(run_config, dict):
        run_config = {"model": {"class_path": checkpoint["method_class"], "init_args": dict(module.hparams)},
                      "data": {"class_path": checkpoint["datamodule_class"], "init_args": dict(datamodule.hparams)}}
    evaluation = init.evaluation
    trained_with = run_config.get("evaluation").get("attacks") if isinstance(run_config.get("evaluation"), dict) else None
    if trained_with is not None and not isinstance(trained_with, list):
        raise BenchError(f"{args.checkpoint}: run_config.evaluation.attacks must be a list, got {type(trained_with).__name__}")
    if evaluation.attacks is None and trained_with:
        # unless told otherwise, attack the checkpoint exactly as its run was attacked, so the records compare
        evaluation.attacks = [_instantiate_attack(spec, f"{args.checkpoint}: run_config.evaluation.attacks[{index}]")
                              for index, spec in enumerate(trained_with)]
    epoch = checkpoint.get("epoch")
    config = {**run_config, "checkpoint": str(Path(args.checkpoint).resolve()),
              "training": {"epochs": None if epoch is None else epoch + 1, "global_step": checkpoint.get("global_step")},
              "evaluation": {**_plain(args.evaluation), "attacks": [_describe(a) for a in evaluation.attacks or []] or None}}
    evaluation.evaluate_and_record(module, datamodule, config=config)


def _instantiate_attack(spec: Any, where: str):
    """A registered attack from its LightningCLI form {class_path, init_args}, as read from a checkpoint."""
    from bench import registry

    if not isinstance(spec, dict):
        raise BenchError(f"{where} must be {{class_path, init_args}}, got {type(spec).__name__}")
    try:
        cls = registry.resolve_class("attack", spec.get("class_path"))
    except BenchError as error:
        raise BenchError(f"{where}: {error}") from None
    return cls(**_plain_kwargs(spec.get("init_args") or {}, f"{where}.init_args"))


def _describe(attack) -> dict[str, Any]:
    return {"class_path": class_path(attack), "init_args": attack.config()}


def read_checkpoint(path: str) -> dict[str, Any]:
    """A local checkpoint file as plain data: ``torch.load(weights_only=True)``, so no pickle runs code.

    Raises :class:`BenchError` in one line for a missing, truncated, foreign or hostile file.
    """
    import pickle

    import torch

    if "://" in str(path):
        raise BenchError(f"checkpoint {path}: only local files are read (download it first)")
    file = Path(path)
    if not file.is_file():
        raise BenchError(f"checkpoint {path} not found; `bench fit` writes them under the run folder it prints (checkpoints/*.ckpt)")
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        import re

        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f"it would call {unsafe.group(1)}" if unsafe else "it holds objects other than tensors and plain data"
        raise BenchError(f"refusing checkpoint {path}: {what} when unpickled; bench loads only weights_only checkpoints") from error
    except Exception as error:  # torch raises many types for truncated or foreign files
        first = str(error).splitlines()[0].split(". ")[0][:160] if str(error) else ""
        raise BenchError(f"cannot read checkpoint {path} ({type(error).__name__}: {first}); "
                         "is it a complete .ckpt written by `bench fit`?") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise BenchError(f"{path} is not a Lightning checkpoint (no state_dict); give a .ckpt written by `bench fit`")
    return raw


def load_checkpoint(path: str, data_dir: Optional[str] = None, device: str = "auto", method: Optional[str] = None,
                    datamodule: Optional[str] = None):
    """Rebuild the method and its DataModule from a checkpoint written by ``bench fit``.

    The checkpoint's class names are only looked up among the registered classes (nothing is imported
    because a file says so); ``method`` / ``datamodule`` are class paths the user names, which may be imported.
    """
    import torch

    from bench import registry

    raw = read_checkpoint(path)
    info = raw.get("bench")
    if not isinstance(info, dict) or not isinstance(info.get("datamodule_class"), str) or not isinstance(info.get("method_class"), str):
        raise BenchError(f"{path} is not a bench checkpoint (no method/datamodule information); train it with `bench fit`")

    def chosen(kind: str, user_choice: Optional[str], written: str) -> type:
        if user_choice is None:
            try:
                return registry.resolve_class(kind, written)
            except BenchError as error:
                raise BenchError(f"{path} names {kind} class {written}: {error}") from None
        cls = registry.resolve_class(kind, user_choice, allow_import=True)
        if class_path(cls) != written and cls.__name__ != written.rpartition(".")[2]:
            raise BenchError(f"{path} was written by {kind} class {written}, not {user_choice}")
        return cls

    method_cls = chosen("method", method, info["method_class"])
    datamodule_cls = chosen("datamodule", datamodule, info["datamodule_class"])
    hparams = _plain_kwargs(info.get("datamodule_hparams", {}), f"{path}: bench.datamodule_hparams")
    if data_dir is not None:
        hparams["data_dir"] = data_dir
    try:
        built_datamodule = datamodule_cls(**hparams)
    except BenchError:
        raise
    except Exception as error:
        raise BenchError(f"cannot build {datamodule_cls.__name__} from {path} ({type(error).__name__}: {error})") from error
    module_hparams = _accepted(method_cls, _plain_kwargs(raw.get("hyper_parameters", {}), f"{path}: hyper_parameters"))
    try:
        # built here rather than with Lightning's load_from_checkpoint, which imports the `_instantiator` a file names
        module = method_cls(**module_hparams)
        module.on_load_checkpoint(raw)
        module.load_state_dict(raw["state_dict"])
    except BenchError:
        raise
    except Exception as error:
        raise BenchError(f"cannot restore {method_cls.__name__} from {path} ({type(error).__name__}: {str(error).splitlines()[0][:300]})") from error
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return module.to(device), built_datamodule, {**info, "epoch": raw.get("epoch"), "global_step": raw.get("global_step")}


def _accepted(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``cls`` takes (hyper-parameters a base class saved but a subclass fixes are dropped, as Lightning does)."""
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {key: value for key, value in kwargs.items() if key in parameters}


def _plain_kwargs(values: Any, where: str) -> dict[str, Any]:
    """Keyword arguments read from a file: a mapping of names to values; private keys (``_instantiator``...) dropped."""
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise BenchError(f"{where} must map argument names to values, got {type(values).__name__}")
    return {key: value for key, value in values.items() if not key.startswith("_")}


# ---------------------------------------------------------------------- bench leaderboard
def leaderboard_command(argv: list[str]) -> None:
    import argparse

    from bench.leaderboard import generate_leaderboard

    from bench.records import DEFAULT_LEADERBOARD_DIR, DEFAULT_RECORDS_DIR

    parser = argparse.ArgumentParser(
        prog="bench leaderboard", description="Regenerate leaderboard tables and plots from result records.",
        epilog=f"Without arguments: your own results ({DEFAULT_RECORDS_DIR} -> {DEFAULT_LEADERBOARD_DIR}), where `bench fit` "
               "writes them. The leaderboard shipped with the suite: `bench leaderboard --records leaderboard/records`.")
    parser.add_argument("--records", nargs="+", default=[DEFAULT_RECORDS_DIR], help="record files or folders")
    parser.add_argument("--out", default=None, help="output folder (README.md, leaderboard.csv, plots/); default: the "
                                                    "folder holding the records folder (e.g. leaderboard for leaderboard/records)")
    parser.add_argument("--include_degenerate", action="store_true", help="also rank runs flagged degenerate (at chance accuracy)")
    args = parser.parse_args(argv)
    missing = [location for location in args.records if not Path(location).exists()]
    if missing:
        raise BenchError(f"no records at {', '.join(missing)}; `bench fit` writes records to {DEFAULT_RECORDS_DIR} by default")
    first = Path(args.records[0])
    out = args.out or (first.parent if first.is_dir() and first.name == "records" else DEFAULT_LEADERBOARD_DIR)
    result = generate_leaderboard(args.records, out, include_degenerate=args.include_degenerate)
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
