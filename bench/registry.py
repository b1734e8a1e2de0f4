"""What the suite has: methods, DataModules, attacks and shipped configs, found by name.

Methods, DataModules and attacks are the concrete subclasses of their base classes that have
been imported (a class sets ``abstract = True`` in its own body to stay out of the lists), so a
new method is registered by defining it in ``bench/modules/`` and importing it there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from bench.errors import BenchError

T = TypeVar("T", bound=type)
CONFIG_DIR = Path(__file__).parent / "configs"
SWEEP_DIR = Path(__file__).parent / "sweeps"


def _concrete_subclasses(base: T) -> dict[str, T]:
    found: dict[str, T] = {}
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not cls.__dict__.get("abstract", False) and not cls.__name__.startswith("_"):
            found[cls.__name__] = cls
    return dict(sorted(found.items()))


def methods() -> dict[str, type]:
    import bench.modules  # noqa: F401  (registers the shipped methods)
    from bench.modules.base import PrivacyModule

    return _concrete_subclasses(PrivacyModule)


def datamodules() -> dict[str, type]:
    import bench.datamodules  # noqa: F401
    from bench.datamodules.base import PrivacyDataModule

    return _concrete_subclasses(PrivacyDataModule)


def attacks() -> dict[str, type]:
    import bench.attacks  # noqa: F401
    from bench.attacks.base import Attack

    return _concrete_subclasses(Attack)


def configs() -> dict[str, Path]:
    """Shipped configs by name: the path under ``bench/configs`` without ``.yaml`` (e.g. ``dnn/mnist``)."""
    return {path.relative_to(CONFIG_DIR).with_suffix("").as_posix(): path for path in sorted(CONFIG_DIR.rglob("*.yaml"))}


def sweeps() -> dict[str, Path]:
    """Shipped sweeps by name (``bench sweep NAME``)."""
    return {path.relative_to(SWEEP_DIR).with_suffix("").as_posix(): path for path in sorted(SWEEP_DIR.rglob("*.yaml"))}


def resolve_config(name_or_path: str, kind: str = "config") -> str:
    """A file given by path stays as it is; a shipped config's (or sweep's) name becomes its path."""
    if Path(name_or_path).exists():
        return name_or_path
    shipped = configs() if kind == "config" else sweeps()
    key = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    if key in shipped:
        return str(shipped[key])
    raise BenchError(f"no {kind} file '{name_or_path}' and no shipped {kind} of that name; `bench list` shows the shipped ones")


def lookup(kind: str, name: str) -> type:
    """The registered class ``name`` of ``kind`` (method, datamodule or attack), or a clear error."""
    table = {"method": methods, "datamodule": datamodules, "attack": attacks}[kind]()
    short = name.rsplit(".", 1)[-1]
    if short in table:
        return table[short]
    raise BenchError(f"unknown {kind} '{name}'; available: {', '.join(table)} (see `bench list`)")


_BASES = {"method": ("bench.modules.base", "PrivacyModule"), "datamodule": ("bench.datamodules.base", "PrivacyDataModule"),
          "attack": ("bench.attacks.base", "Attack")}


def resolve_class(kind: str, name: str, allow_import: bool = False) -> type:
    """The class ``name`` (short name or dotted path) of ``kind`` (method, datamodule or attack).

    Only a registered class (a concrete subclass of the kind's base class that is already imported: the
    suite's own, or one the user's command line imported) is returned. ``allow_import`` is for names the
    *user* typed (``--model mypkg.MyMethod``): then the module is imported and the class must subclass the
    base. Names read from a checkpoint or a record never get ``allow_import``: a file must not choose
    what code runs, so a path that is not already imported is an error, and nothing is imported or called.
    """
    import importlib
    import sys

    from bench.errors import class_path

    table = {"method": methods, "datamodule": datamodules, "attack": attacks}[kind]()
    if not isinstance(name, str) or not name:
        raise BenchError(f"a {kind} class must be named by a non-empty string, got {name!r}")
    if "." not in name:
        if name in table:
            return table[name]
        raise BenchError(f"unknown {kind} '{name}'; available: {', '.join(table)} (see `bench list`)")
    registered = list(table.values())
    for cls in registered:
        if class_path(cls) == name:
            return cls
    module_name, _, attribute = name.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None and allow_import:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise BenchError(f"cannot import {kind} class {name}: {error}") from error
    candidate = getattr(module, attribute, None) if module is not None else None
    base_module, base_name = _BASES[kind]
    base = getattr(importlib.import_module(base_module), base_name)
    if isinstance(candidate, type) and issubclass(candidate, base):
        if candidate in registered or (allow_import and not candidate.__dict__.get("abstract", False)):
            return candidate
    if not allow_import:
        raise BenchError(f"'{name}' is not a registered {kind} of this bench (registered: {', '.join(table)}); "
                         f"a checkpoint or record may only name those. If it is your own {base_name} subclass, "
                         "name it yourself on the command line (e.g. --model/--data pkg.Class) so that it is imported")
    raise BenchError(f"{name} is not a {base_name} subclass; a {kind} must subclass {base_module}.{base_name}")
