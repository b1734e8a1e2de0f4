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
from bench.errors import BenchError, class_path, writable_folder

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
            if not value.lstrip().startswith(("{", "[")) and Path(value).suffix not in (".yaml", ".yml", ".json"):
                kind = "method" if key == "--model" else "datamodule"
                cls = registry.resolve_class(
                    kind, value, allow_import=True
                )  # the user typed it: may be their own package
                value = f"{cls.__module__}.{cls.__qualname__}"
            arg = f"{key}={value}"
        resolved.append(arg)
        index += 1
    return resolved


def add_compose_argument(parser) -> None:
    # `bench` applies a config's pieces before jsonargparse reads it (resolve_names); the key itself stays a record
    parser.add_argument(
        "--compose",
        type=Optional[list[str]],
        default=None,
        help="the shipped pieces (or YAML files) a config is composed of, applied before it (see `bench list`)",
    )


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
    from lightning.pytorch.cli import LightningCLI

    from bench import registry
    from bench.callbacks.console import RunConfig
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation
    from bench.datamodules.base import PrivacyDataModule
    from bench.modules.base import PrivacyModule

    quiet_lightning()
    for kind in (registry.methods, registry.datamodules, registry.attacks):
        kind()  # imports the suite's classes (registration is explicit): configs may name them by their short names

    class BenchCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(PrivacyEvaluation, "evaluation")
            parser.add_argument(
                "--sweep_point",
                type=Optional[str],
                default=None,
                help="set by `bench sweep`: the grid point's key, kept in the record so a rerun skips the point",
            )
            parser.add_argument(
                "--sweep_cache",
                type=Optional[str],
                default=None,
                help="set by `bench sweep`: the folder its points share for `--evaluation.shadow_cache auto`",
            )
            add_compose_argument(parser)
            # networks adapt to the dataset: the DataModule's spec is handed to the method
            parser.link_arguments(
                "data", "model.init_args.data_spec", compute_fn=lambda data: data.spec, apply_on="instantiate"
            )

        def _parse_ckpt_path(self) -> None:
            apply_checkpoint_hyper_parameters(self)

        def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if kwargs.get("ckpt_path") is not None:
                kwargs["weights_only"] = True  # never unpickle objects from a checkpoint, whatever torch's default
                check_as_loaded(self.trainer.strategy, type(self.model))
            return kwargs

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
            config, callbacks = trainer_arguments(config, callbacks)
            try:
                return super()._instantiate_trainer(config, callbacks)
            except (MisconfigurationException, ValueError) as error:  # the Trainer's own checks of its arguments
                raise lightning_refused(error) from error

        def before_fit(self) -> None:
            prepare_fit(self)

        def after_fit(self) -> None:
            finish_fit(self)

    # exit_on_error off: a parser error is raised, and `main` prints its one useful line instead of 60 lines of usage
    default_config = {
        "exit_on_error": False,
        **{
            subcommand: {"default_config_files": [str(DEFAULTS)], "exit_on_error": False}
            for subcommand in LIGHTNING_SUBCOMMANDS
        },
    }
    # LightningCLI reads sys.argv (DDP re-launches the same command line on the other ranks)
    saved_argv, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "bench", *argv]
    try:
        return BenchCLI(
            PrivacyModule,
            PrivacyDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=default_config,
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved_argv


def apply_checkpoint_hyper_parameters(cli) -> None:
    """``--ckpt_path`` in the CLI's config: the checkpoint's plain hyper-parameters, applied to the method the command
    line chose.

    LightningCLI would apply the checkpoint's hyper-parameters, class paths included, to the parser (which imports
    any class path it meets): bench checks the file first and applies only plain values.
    """
    subcommand = cli.config.get("subcommand")
    ckpt_path = cli.config[subcommand].get("ckpt_path") if subcommand else None
    if ckpt_path is None:
        return
    configured = getattr(cli.config[subcommand].get("model"), "class_path", None)
    model_class = configured_method(configured)
    if str(ckpt_path) in CKPT_PATH_KEYWORDS:
        refuse_shadowed_keyword(str(ckpt_path))
        return  # Lightning resolves it when the run starts; the file it picks is checked as it is loaded
    raw = check_resume_checkpoint(str(ckpt_path), model_class)
    hparams = resumable_hyper_parameters(raw, model_class)
    if hparams:
        cli.config = cli.parser.parse_object(
            {subcommand: {"model": {"class_path": configured, "dict_kwargs": hparams}}}, cli.config
        )


def trainer_arguments(config: dict[str, Any], callbacks: list) -> tuple[dict[str, Any], list]:
    """The Trainer's config and extra callbacks as bench runs it: a writable ``default_root_dir`` (checked here), and
    one line per epoch instead of a progress bar where stderr is not a terminal."""
    from lightning.pytorch.callbacks import ProgressBar

    from bench.callbacks.console import EpochLines

    if config.get("default_root_dir") is not None:
        writable_folder(str(config["default_root_dir"]), "--trainer.default_root_dir")
    given = config.get("callbacks") or []
    given = given if isinstance(given, list) else [given]
    if (
        config.get("enable_progress_bar") is not False
        and not sys.stderr.isatty()
        and not any(isinstance(callback, ProgressBar) for callback in given)
    ):
        # a bar redraws with carriage returns: in a log file or CI, one line per epoch instead
        config = {**config, "enable_progress_bar": False}
        callbacks = [*callbacks, EpochLines()]
    return config, callbacks


def prepare_fit(cli) -> None:
    """Before ``fit``: loggers continue a resumed run, ``last.ckpt`` is saved, evaluations know the run's config."""
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation
    from bench.loggers import continue_runs

    continue_runs(cli.trainer.loggers, cli.config[cli.subcommand].get("ckpt_path"))  # before W&B starts
    checkpoint = cli.trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.save_last is None:
        checkpoint.save_last = True  # checkpoints/last.ckpt, to resume or evaluate without knowing the step
    for callback in cli.trainer.callbacks:
        if isinstance(callback, PrivacyEvaluation):
            callback.run_config = plain(cli.config.get(cli.subcommand, cli.config))
            callback.sweep_cache = cli.config[cli.subcommand].get("sweep_cache")
            callback.defer_summary = True  # printed by finish_fit, after W&B's own closing lines


def finish_fit(cli) -> None:
    """After ``fit``: the evaluation callbacks wrote their records; refresh the leaderboard and close the run."""
    from bench.callbacks.privacy_evaluation import PrivacyEvaluation

    evaluations = [
        callback
        for callback in cli.trainer.callbacks
        if isinstance(callback, PrivacyEvaluation) and callback.outcome is not None
    ]
    if not evaluations or not cli.trainer.is_global_zero:
        return
    for callback in evaluations:
        callback.evaluator().refresh_leaderboard(callback.outcome)
    import wandb

    if wandb.run is not None:
        wandb.finish()  # its sync hint now, not after our summary at exit
    print("\n".join(callback.outcome.summary() for callback in evaluations), flush=True)
    incomplete = [callback.outcome for callback in evaluations if not callback.outcome.complete]
    if incomplete:  # a failed attack or an unwritable records folder: exit 1, after the summary
        raise incomplete[0].incomplete_error()


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


#: keys by which Lightning and jsonargparse choose a class or a function to import
CLASS_KEYS = ("class_path", "_class_path", "_instantiator", "init_args", "dict_kwargs")
#: the method's init arguments that are not the checkpoint's to give: linked from --data when the run starts
LINKED_FROM_DATA = ("data_spec",)
#: the sections of a checkpoint LightningCLI or Lightning read classes from, and the kind their top level names
CHECKED_SECTIONS = {"hyper_parameters": "method", "datamodule_hyper_parameters": "datamodule"}


def configured_method(configured: Any) -> Optional[type]:
    """The method class of this run's config (the command line's choice, which jsonargparse imported already)."""
    from bench import registry

    if not isinstance(configured, str):
        return None
    try:
        return registry.resolve_class("method", configured)
    except BenchError:
        return None


def refuse_shadowed_keyword(keyword: str) -> None:
    """``--ckpt_path last`` is Lightning's shorthand, but LightningCLI would also read a file so named here."""
    if Path(keyword).is_file():
        raise BenchError(
            f"--ckpt_path {keyword}: Lightning reads '{keyword}' as a shorthand, but the working "
            f"directory holds a file of that name; give it as ./{keyword} to use that file"
        )


def check_resume_checkpoint(path: str, model_class: Optional[type] = None) -> dict[str, Any]:
    """``--ckpt_path``: a readable Lightning checkpoint naming only registered classes (and ``model_class``'s)."""
    raw = read_checkpoint(path)
    check_checkpoint_contents(raw, path, model_class)
    return raw


def check_checkpoint_contents(raw: dict[str, Any], path: str, model_class: Optional[type] = None) -> list[type]:
    """The methods a checkpoint names, once nothing in it names a class that is not registered (nothing is imported).

    Every ``class_path``/``_class_path`` anywhere in its hyper-parameters is looked up among the registered classes by
    name; a nested ``_instantiator``, ``init_args`` or ``dict_kwargs`` without one is refused. With ``model_class``
    (the run's method, from the command line) a checkpoint of another method is refused.
    """
    for section, kind in CHECKED_SECTIONS.items():
        values = raw.get(section)
        if values is not None and not isinstance(values, dict):
            raise BenchError(f"--ckpt_path {path}: {section} must be a mapping, got {type(values).__name__}")
        for where, node in _dicts_within(values or {}, section):
            _check_class_keys(node, where, path, kind if where == section else None)
    methods = [_registered(path, "method", name, where) for where, name in _written_methods(raw)]
    for method in methods:
        if model_class is not None and not issubclass(model_class, method):
            raise BenchError(
                f"--ckpt_path {path} was written by {class_path(method)}, but this run's --model is "
                f"{class_path(model_class)}"
            )
    return methods


def _dicts_within(value: Any, where: str, depth: int = 0):
    """(location, mapping) for every mapping in ``value``, itself included."""
    if depth > 64:
        raise BenchError(f"{where}: nested too deeply")
    if isinstance(value, dict):
        yield where, value
        for key, item in value.items():
            yield from _dicts_within(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _dicts_within(item, f"{where}[{index}]", depth + 1)


def _check_class_keys(node: dict, where: str, path: str, top_kind: Optional[str]) -> None:
    """``top_kind``: the kind of class the section's top level names; None for a nested mapping (any kind)."""
    named = [key for key in ("class_path", "_class_path") if key in node]
    for key in named:
        _registered(path, top_kind, node[key], f"{where}.{key}")  # compared by name, before anything is imported
    top = top_kind is not None
    # the top level's `_instantiator` (Lightning's own) is never followed; anywhere else it has no business
    unfollowed = [
        key for key in CLASS_KEYS if key in node and key not in named and not (top and key == "_instantiator")
    ]
    if unfollowed and not named:
        raise BenchError(
            f"--ckpt_path {path}: {where}.{unfollowed[0]} without a registered class_path; "
            "a checkpoint may only name registered classes"
        )


def _written_methods(raw: dict[str, Any]) -> list[tuple[str, Any]]:
    hparams = raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), dict) else {}
    info = raw.get("bench") if isinstance(raw.get("bench"), dict) else {}
    written = [(f"hyper_parameters.{key}", hparams.get(key)) for key in ("_class_path", "class_path")]
    written.append(("bench.method_class", info.get("method_class")))
    return [(where, name) for where, name in written if name is not None]


def _registered(path: str, kind: Optional[str], name: Any, where: str) -> type:
    """The registered class ``name`` (of ``kind``, or of any kind), looked up without importing anything."""
    from bench import registry

    kinds = [kind] if kind else ["method", "datamodule", "attack"]
    if isinstance(name, str):
        for each in kinds:
            try:
                return registry.resolve_class(each, name)
            except BenchError:
                continue
    what = kind or "method, datamodule or attack"
    raise BenchError(
        f"--ckpt_path {path}: {where} names {name!r}, not a registered {what} class; a checkpoint may "
        "only name registered classes (a class of your own package is given on the command line)"
    )


def resumable_hyper_parameters(raw: dict[str, Any], model_class: Optional[type]) -> dict[str, Any]:
    """The checkpoint's hyper-parameters that may go to the parser: plain values of ``model_class``'s own arguments."""
    from bench.checkpoints import accepted_kwargs

    hparams = raw.get("hyper_parameters") or {}
    if "class_path" in hparams:  # the LightningCLI form {class_path, init_args}
        hparams = hparams.get("init_args") if isinstance(hparams.get("init_args"), dict) else {}
    values = {
        key: value
        for key, value in hparams.items()
        if isinstance(key, str) and not key.startswith("_") and key not in (*CLASS_KEYS, *LINKED_FROM_DATA)
    }
    return accepted_kwargs(model_class, values) if model_class is not None else {}


def check_as_loaded(strategy: Any, model_class: type) -> None:
    """Check the file Lightning loads (``last``, ``best``, ``hpc`` resolve only then) before the model sees it."""
    load = strategy.load_checkpoint
    if getattr(load, "bench_checked", False):
        return

    def load_checked(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        checkpoint = load(checkpoint_path, *args, **kwargs)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise BenchError(f"{checkpoint_path} is not a Lightning checkpoint (no state_dict)")
        check_checkpoint_contents(checkpoint, str(checkpoint_path), model_class)
        return checkpoint

    load_checked.bench_checked = True
    strategy.load_checkpoint = load_checked


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
        return (
            f"{where}: {given_class.group(1).rsplit('.', 1)[-1]} has no argument '{option.group(1)}'{hint} "
            f"(its arguments: {', '.join(accepted)})"
        )
    bad_class = re.search(
        r"(?:Expected a dot import path string: |Import path |No module named |class_path[:=] ?)'?([\w.]+)'?", message
    )
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
            names += [
                p
                for p in inspect.signature(klass.__init__).parameters
                if p not in ("self", "args", "kwargs") and p not in names and p != "data_spec"
            ]
    return names
