"""The LightningCLI under ``bench fit | validate | test | predict``, and the argument resolution before it.

Shipped config names become paths (with their ``compose:`` pieces first), ``--model``/``--data`` names become
class paths (a dotted path the user typed may be imported), plain ``bench fit`` becomes the quickstart, and a
checkpoint given to ``--ckpt_path`` may only name registered methods. ``bench.cli`` dispatches the verbs and
``bench.sweeps`` resolves each grid point through :func:`resolve_names` and :func:`run_lightning_cli` too.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Optional

from bench.checkpoints import read_checkpoint
from bench.errors import BenchError, class_path

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
DEFAULTS = Path(__file__).parent / "configs" / "defaults.yaml"
QUICKSTART = Path(__file__).parent / "configs" / "quickstart.yaml"
CHOOSERS = ("--config", "-c", "--model", "--data")
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")  # --ckpt_path values Lightning resolves itself


def with_quickstart(argv: list[str]) -> list[str]:
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


def resolve_names(argv: list[str]) -> list[str]:
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


def add_compose_argument(parser) -> None:
    # `bench` applies a config's pieces before jsonargparse reads it (resolve_names); the key itself stays a record
    parser.add_argument("--compose", type=Optional[list[str]], default=None,
                        help="the shipped pieces (or YAML files) a config is composed of, applied before it (see `bench list`)")


def quiet_lightning() -> None:
    """No adverts and no deprecation noise from the libraries under every run: the output is the run's.

    The suite's own renames are shown: an old name in a config is the user's to fix."""
    import logging
    import warnings

    def no_adverts(record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(no_adverts)
    # "Seed set to 0" comes while the command line is still being checked, before any error about it; the seed
    # is in the run's config and record
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    from bench.deprecation import BenchDeprecationWarning

    warnings.simplefilter("default", BenchDeprecationWarning)


def run_lightning_cli(argv: list[str]):
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.cli import LightningCLI

    import bench.attacks  # noqa: F401  (attack classes become choosable by name)
    from bench import registry
    from bench.callbacks.console import EpochLines, RunConfig
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation
    from bench.datamodules.base import PrivacyDataModule
    from bench.modules.base import PrivacyModule

    quiet_lightning()

    class BenchCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(PrivacyEvaluation, "evaluation")
            parser.add_argument("--sweep_point", type=Optional[str], default=None,
                                help="set by `bench sweep`: the grid point's key, kept in the record so a rerun skips the point")
            add_compose_argument(parser)
            # networks adapt to the dataset: the DataModule's spec is handed to the method
            parser.link_arguments("data", "model.init_args.data_spec", compute_fn=lambda data: data.spec,
                                  apply_on="instantiate")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI applies the checkpoint's hyper-parameters, class path included, to the model's config:
            # read the file safely first, and let it name only a registered method (nothing new is imported)
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
            self._checkpoint_methods: list[type] = []
            if ckpt_path is not None and str(ckpt_path) not in CKPT_PATH_KEYWORDS:
                self._checkpoint_methods = check_resume_checkpoint(str(ckpt_path))
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
            if config.get("default_root_dir") is not None:
                writable_folder(str(config["default_root_dir"]), "--trainer.default_root_dir")
            given = config.get("callbacks") or []
            given = given if isinstance(given, list) else [given]
            if (config.get("enable_progress_bar") is not False and not sys.stderr.isatty()
                    and not any(isinstance(callback, ProgressBar) for callback in given)):
                # a bar redraws with carriage returns: in a log file or CI, one line per epoch instead
                config = {**config, "enable_progress_bar": False}
                callbacks = [*callbacks, EpochLines()]
            try:
                return super()._instantiate_trainer(config, callbacks)
            except (MisconfigurationException, ValueError) as error:  # the Trainer's own checks of its arguments
                raise lightning_refused(error) from error

        def before_fit(self) -> None:
            checkpoint = self.trainer.checkpoint_callback
            if checkpoint is not None and checkpoint.save_last is None:
                checkpoint.save_last = True  # checkpoints/last.ckpt, to resume or evaluate without knowing the step
            for callback in self.trainer.callbacks:
                if isinstance(callback, PrivacyEvaluation):
                    callback.run_config = plain(self.config.get(self.subcommand, self.config))
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


def lightning_refused(error: Exception) -> BenchError:
    """Lightning's refusal of trainer settings (accelerator, strategy, epochs...) as one line saying what to change."""
    import torch

    message = " ".join(str(error).split()) or type(error).__name__
    needs_gpu = any(word in message.lower() for word in ("gpu", "cuda")) and not torch.cuda.is_available()
    if needs_gpu and "strategy" in message:
        advice = "that strategy needs a GPU and this machine has none: use --trainer.strategy auto (or ddp) here"
    elif needs_gpu:
        advice = "this machine has no usable GPU: use --trainer.accelerator cpu (or auto)"
    else:
        advice = "change the --trainer option it names (or the config's trainer: section); bench fit --help lists them"
    return BenchError(f"Lightning refused the trainer settings: {message} ({advice})")


def writable_folder(folder: str, option: str) -> None:
    """``folder`` exists (made if need be) and takes files, or one error naming the option that chose it."""
    import tempfile

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise BenchError(f"{option} {folder}: cannot write there ({error.strerror or error}); give a folder you can "
                         "write to") from None


def check_resume_checkpoint(path: str) -> list[type]:
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


def plain(namespace: Any) -> Any:
    """A jsonargparse Namespace (with class paths and init args) as plain JSON-able data."""
    if hasattr(namespace, "as_dict"):
        namespace = namespace.as_dict()
    if isinstance(namespace, dict):
        return {key: plain(value) for key, value in namespace.items() if not key.startswith("__")}
    if isinstance(namespace, (list, tuple)):
        return [plain(value) for value in namespace]
    if isinstance(namespace, (str, int, float, bool)) or namespace is None:
        return namespace
    return str(namespace)


# ---------------------------------------------------------------------- bench evaluate


def summarize_argument_error(message: str) -> str:
    """The one useful line of a jsonargparse error: what was wrong, where, and the closest valid names."""
    import re

    from bench import registry

    key = re.search(r'Parser key "([^"]+)"', message)
    option = re.search(r"Option '([^']+)' is not accepted", message)
    given_class = re.search(r"Problem with given class_path '([^']+)'", message)
    if option and given_class:
        accepted = init_arguments(given_class.group(1))
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
        where, value = key.group(1), given.group(1).strip()
        # a class's init argument given on its own (--model.lr fast) arrives wrapped in jsonargparse's NestedArg
        nested = re.fullmatch(r"NestedArg\(key='([^']*)', val=(['\"])(.*)\2\)", value)
        if nested:
            where, value = f"{where}.{nested.group(1)}", nested.group(3)
        return f"--{where}: expected {names}, got {value!r}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[0] if lines else message


def init_arguments(dotted: str) -> list[str]:
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
