"""Renamed names: the old one keeps working, with a warning, for one release.

One declarative table of what was renamed, read by both sides: the methods, which accept an old argument
name or network name and record the new one only (:func:`renamed_argument`, :func:`keep_current_names`,
and :func:`bench.networks.registry.resolve_network` for networks), and the leaderboard, which reads records
written before a rename under the current names (:func:`current_method_names`), so that an old run and a
new run of the same setting share one row.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional

from bench.errors import BenchError

#: the suite's method (class name, in bench.modules) -> {deprecated argument: its current name}
RENAMED_ARGUMENTS: dict[str, dict[str, str]] = {
    "RAN": {"k": "stage_pairs"},
    "MCMIA": {"gamma": "minmax_weight", "k": "inference_steps"},
    "ComplexNet": {"k": "phases_per_sample"},
    "ComplexNetBaseline": {"gamma": "noise_level"},
    "Collaborative": {"gamma": "lr_decay_factor"},
}
#: where the suite's methods live: only their records are read under the new names (another package's method
#: may use a retired name for something of its own)
SUITE_METHODS = "bench.modules."

#: deprecated network name -> its name in :mod:`bench.networks.registry`
RENAMED_NETWORKS: dict[str, str] = {
    "lenet": "lenet5",  # LeNet-5 in the split and complex-valued families (the classifiers already said lenet5)
    "vgg": "vgg9",  # the split family's VGG: VGG-11's first four blocks and a 3-layer head, 9 weight layers
}

#: where a record's method names its network (``hparams.network`` and the ``network`` it is shown under)
_NETWORK = "network"


class BenchDeprecationWarning(DeprecationWarning):
    """A name the suite renamed. `bench` commands show it (Python hides DeprecationWarning outside ``__main__``)."""


def warn_renamed(owner: str, what: str, old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{owner}: {what} `{old}` is deprecated and goes in the next release; use `{new}`",
        BenchDeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def _renamed(owner: type) -> dict[str, str]:
    if not owner.__module__.startswith(SUITE_METHODS) or owner.__name__ not in RENAMED_ARGUMENTS:
        raise KeyError(
            f"{owner.__module__}.{owner.__name__} has no renamed arguments in bench.deprecation.RENAMED_ARGUMENTS"
        )
    return RENAMED_ARGUMENTS[owner.__name__]


def renamed_argument(owner: type, old: str, old_value: Optional[Any], new_value: Any, default: Any) -> Any:
    """The value of the current name of argument ``old`` of ``owner``, taken from ``old`` when that one is given.

    Methods take the old name as a keyword defaulting to None and record the current name only
    (:func:`keep_current_names`), e.g. ``RAN(k=3)`` is ``RAN(stage_pairs=3)``.
    """
    new = _renamed(owner)[old]
    if old_value is None:
        return new_value
    if new_value != default:
        raise BenchError(f"{owner.__name__}: give `{new}` only; `{old}` is its deprecated name")
    warn_renamed(owner.__name__, "argument", old, new)
    return old_value


def keep_current_names(hparams: Any, owner: type, **current: Any) -> None:
    """Drop ``owner``'s deprecated argument names from ``hparams`` and set the current values.

    Under LightningCLI a module's hparams are the arguments as given (old names included), so each method
    states what it resolved: records, checkpoints and shadow models then know the current names only.
    """
    for old in _renamed_arguments_of(f"{owner.__module__}.{owner.__name__}"):
        hparams.pop(old, None)
    hparams.update(current)


def current_hparams(method_class: Any, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` of a record of ``method_class`` (a class path) under the current argument and network names."""
    renamed = _renamed_arguments_of(method_class)
    current: dict[str, Any] = {}
    for key, value in hparams.items():
        new = renamed.get(key)
        if new is None:
            current.setdefault(key, value)
        elif new not in hparams:  # a record from before the rename; with both, the old one is a leftover
            current[new] = value
    if _suite_method(method_class) and isinstance(current.get(_NETWORK), str):
        current[_NETWORK] = RENAMED_NETWORKS.get(current[_NETWORK], current[_NETWORK])
    return current


def current_method_names(method: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``method`` section under the current names (a copy; records on disk stay as written)."""
    current = dict(method)
    method_class = method.get("class")
    if isinstance(method.get("hparams"), Mapping):
        current["hparams"] = current_hparams(method_class, method["hparams"])
    if _suite_method(method_class) and isinstance(method.get(_NETWORK), str):
        current[_NETWORK] = RENAMED_NETWORKS.get(method[_NETWORK], method[_NETWORK])
    return current


def _suite_method(method_class: Any) -> bool:
    return isinstance(method_class, str) and method_class.startswith(SUITE_METHODS)


def _renamed_arguments_of(method_class: Any) -> dict[str, str]:
    """The renames of the method of class path ``method_class`` (``bench.modules.ran.RAN`` or ``bench.modules.RAN``)."""
    return RENAMED_ARGUMENTS.get(method_class.rsplit(".", 1)[-1], {}) if _suite_method(method_class) else {}
