"""Reading ``bench fit`` checkpoints safely: plain data only, and only registered classes are built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from bench.errors import BenchError, class_path, regular_file


def instantiate_attack(spec: Any, where: str):
    """A registered attack from its LightningCLI form {class_path, init_args}, as read from a checkpoint."""
    from bench import registry

    if not isinstance(spec, dict):
        raise BenchError(f"{where} must be {{class_path, init_args}}, got {type(spec).__name__}")
    try:
        cls = registry.resolve_class("attack", spec.get("class_path"))
    except BenchError as error:
        raise BenchError(f"{where}: {error}") from None
    return cls(**plain_kwargs(spec.get("init_args") or {}, f"{where}.init_args"))


def describe_attack(attack) -> dict[str, Any]:
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
    if file.exists():
        regular_file(file, "checkpoint")  # a FIFO or device would block torch.load or never end
    else:
        raise BenchError(
            f"checkpoint {path} not found; `bench fit` writes them under the run folder it prints (checkpoints/*.ckpt)"
        )
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        import re

        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f"it would call {unsafe.group(1)}" if unsafe else "it holds objects other than tensors and plain data"
        raise BenchError(
            f"refusing checkpoint {path}: {what} when unpickled; bench loads only weights_only checkpoints"
        ) from error
    except Exception as error:  # torch raises many types for truncated or foreign files
        first = str(error).splitlines()[0].split(". ")[0][:160] if str(error) else ""
        raise BenchError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {first}); "
            "is it a complete .ckpt written by `bench fit`?"
        ) from error
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise BenchError(f"{path} is not a Lightning checkpoint (no state_dict); give a .ckpt written by `bench fit`")
    return raw


def load_checkpoint(
    path: str,
    data_dir: Optional[str] = None,
    device: str = "auto",
    method: Optional[str] = None,
    datamodule: Optional[str] = None,
):
    """Rebuild the method and its DataModule from a checkpoint written by ``bench fit``.

    The checkpoint's class names are only looked up among the registered classes (nothing is imported
    because a file says so); ``method`` / ``datamodule`` are class paths the user names, which may be imported.
    """
    import torch

    from bench import registry

    raw = read_checkpoint(path)
    info = raw.get("bench")
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("datamodule_class"), str)
        or not isinstance(info.get("method_class"), str)
    ):
        raise BenchError(
            f"{path} is not a bench checkpoint (no method/datamodule information); train it with `bench fit`"
        )

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
    hparams = plain_kwargs(info.get("datamodule_hparams", {}), f"{path}: bench.datamodule_hparams")
    if data_dir is not None:
        hparams["data_dir"] = data_dir
    try:
        built_datamodule = datamodule_cls(**hparams)
    except BenchError:
        raise
    except Exception as error:
        raise BenchError(
            f"cannot build {datamodule_cls.__name__} from {path} ({type(error).__name__}: {error})"
        ) from error
    module_hparams = accepted_kwargs(
        method_cls, plain_kwargs(raw.get("hyper_parameters", {}), f"{path}: hyper_parameters")
    )
    try:
        # built here rather than with Lightning's load_from_checkpoint, which imports the `_instantiator` a file names
        module = method_cls(**module_hparams)
        module.on_load_checkpoint(raw)
        module.load_state_dict(raw["state_dict"])
    except BenchError:
        raise
    except Exception as error:
        raise BenchError(
            f"cannot restore {method_cls.__name__} from {path} "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]})"
        ) from error
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return (
        module.to(device),
        built_datamodule,
        {**info, "epoch": raw.get("epoch"), "global_step": raw.get("global_step")},
    )


def accepted_kwargs(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``cls`` takes.

    Hyper-parameters a base class saved but a subclass fixes are dropped, as Lightning does.
    """
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {key: value for key, value in kwargs.items() if key in parameters}


def plain_kwargs(values: Any, where: str) -> dict[str, Any]:
    """Keyword arguments read from a file: a mapping of names to values; private keys (``_instantiator``...) dropped."""
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise BenchError(f"{where} must map argument names to values, got {type(values).__name__}")
    return {key: value for key, value in values.items() if not key.startswith("_")}
