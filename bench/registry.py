"""What the suite has: methods, DataModules, attacks and shipped configs, found by name.

Registration is explicit. The suite's methods, DataModules and attacks are listed in :data:`SUITE` (a new
method of the suite is added there); a class of the user's own package is registered when the user names it
by dotted path on the command line (:func:`resolve_class` with ``allow_import``). Defining a subclass
anywhere else (a test, a notebook) registers nothing: `bench list` and checkpoints never see it.
"""

from __future__ import annotations

import importlib
import sys
import weakref
from collections.abc import MutableMapping
from pathlib import Path

from bench.errors import BenchError, regular_file

CONFIG_DIR = Path(__file__).parent / "configs"
#: the pieces shipped experiments are composed from (``compose:``): data, method, attack budget, trainer
PIECE_DIR = CONFIG_DIR / "pieces"
SWEEP_DIR = Path(__file__).parent / "sweeps"


#: the suite's classes by kind, name -> the module that defines it (fixed here: nothing read from a file adds one)
SUITE: dict[str, dict[str, str]] = {
    "method": {
        "Collaborative": "bench.modules.collaborative",
        "ComplexNet": "bench.modules.complex_net",
        "ComplexNetBaseline": "bench.modules.complex_net",
        "DCM": "bench.modules.dcmg",
        "DCMG": "bench.modules.dcmg",
        "DCMGN": "bench.modules.dcmg",
        "DCMGO": "bench.modules.dcmg",
        "DPSGD": "bench.modules.dpsgd",
        "MCMIA": "bench.modules.mcmia",
        "NoisyInput": "bench.modules.noisy_input",
        "RAN": "bench.modules.ran",
        "ResizedDNN": "bench.modules.resized_dnn",
        "SplitNetwork": "bench.modules.split_network",
    },
    "datamodule": {
        "CIFAR10": "bench.datamodules.torchvision_sets",
        "CIFAR100": "bench.datamodules.torchvision_sets",
        "CUB200": "bench.datamodules.cub",
        "CelebA": "bench.datamodules.celeba",
        "Digits": "bench.datamodules.digits",
        "FashionMNIST": "bench.datamodules.torchvision_sets",
        "LocalFolder": "bench.datamodules.folder",
        "MNIST": "bench.datamodules.torchvision_sets",
        "SVHN": "bench.datamodules.torchvision_sets",
    },
    "attack": {
        "AffineInversion": "bench.attacks.compressed_reconstruction",
        "FeatureInversion": "bench.attacks.feature_inversion",
        "GradientInversion": "bench.attacks.gradient_inversion",
        "LearnedPhaseInversion": "bench.attacks.phase_inversion",
        "LiRA": "bench.attacks.lira",
        "LiRAOnline": "bench.attacks.lira",
        "LossThreshold": "bench.attacks.membership_inference",
        "MeasurementDecoder": "bench.attacks.compressed_reconstruction",
        "NasrAttack": "bench.attacks.membership_inference",
        "NasrShadow": "bench.attacks.membership_inference",
        "OwnDecoder": "bench.attacks.own_decoder",
        "PhaseInversion": "bench.attacks.phase_inversion",
        "PseudoInverse": "bench.attacks.compressed_reconstruction",
        "RMIA": "bench.attacks.rmia",
        "RMIAOnline": "bench.attacks.rmia",
        "ReleasedTrainingData": "bench.attacks.compressed_reconstruction",
        "ShokriShadow": "bench.attacks.membership_inference",
    },
}

#: classes of the user's own packages, registered in this process when the user named them (dotted path -> class);
#: weak, so that a class nothing else holds any more (its module dropped) is forgotten
_NAMED: dict[str, MutableMapping[str, type]] = {kind: weakref.WeakValueDictionary() for kind in SUITE}


def _registered(kind: str) -> dict[str, type]:
    suite = {name: getattr(importlib.import_module(module), name) for name, module in SUITE[kind].items()}
    # items() skips referents collected while it iterates; `**weak_dict` would raise KeyError on them
    return {**dict(sorted(suite.items())), **dict(_NAMED[kind].items())}


def methods() -> dict[str, type]:
    """The suite's methods by name, then those the user named on the command line by dotted path."""
    return _registered("method")


def datamodules() -> dict[str, type]:
    return _registered("datamodule")


def attacks() -> dict[str, type]:
    return _registered("attack")


def _yaml_by_name(folder: Path, skip: Path | None = None) -> dict[str, Path]:
    return {
        path.relative_to(folder).with_suffix("").as_posix(): path
        for path in sorted(folder.rglob("*.yaml"))
        if skip is None or skip not in path.parents
    }


def configs() -> dict[str, Path]:
    """Shipped experiments by name: the path under ``bench/configs`` without ``.yaml`` (e.g. ``dnn/mnist``)."""
    return _yaml_by_name(CONFIG_DIR, skip=PIECE_DIR)


def pieces() -> dict[str, Path]:
    """Shipped config pieces by name, the path under ``bench/configs/pieces`` (e.g. ``budget/tiny``)."""
    return _yaml_by_name(PIECE_DIR)


def sweeps() -> dict[str, Path]:
    """Shipped sweeps by name (``bench sweep NAME``)."""
    return _yaml_by_name(SWEEP_DIR)


def resolve_config(name_or_path: str, kind: str = "config", relative_to: Path | None = None) -> str:
    """A file given by path stays as it is; a shipped config's, piece's (or sweep's) name becomes its path.

    ``relative_to``: the folder of the config that names this one in ``compose:`` (paths are relative to it).
    """
    if relative_to is not None and (relative_to / name_or_path).is_file():
        return str(relative_to / name_or_path)
    if relative_to is None and Path(name_or_path).exists():
        return name_or_path
    shipped = {**pieces(), **configs()} if kind == "config" else sweeps()
    key = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    if key in shipped:
        return str(shipped[key])
    raise BenchError(
        f"no {kind} file '{name_or_path}' and no shipped {kind} of that name; `bench list` shows the shipped ones"
    )


def composed_configs(name_or_path: str) -> list[str]:
    """The files a config is made of, in the order they apply: its ``compose:`` pieces first, then itself.

    ``compose:`` (a list, at the top of a config) names shipped configs or pieces, or YAML files by path
    (relative to the composing file), each applied in turn before the file's own settings, which win.
    Pieces may compose pieces. Nothing else is read: a piece can only hold settings, never choose code.
    """
    import yaml

    def expand(path: str, trail: tuple[str, ...]) -> list[str]:
        try:
            content = yaml.safe_load(regular_file(path, "config").read_text())
        except (OSError, yaml.YAMLError) as error:
            raise BenchError(f"cannot read config {path}: {error}") from error
        pieces = content.get("compose") if isinstance(content, dict) else None
        if pieces is None:
            return [path]
        if not isinstance(pieces, list) or not all(isinstance(piece, str) for piece in pieces):
            raise BenchError(f"{path}: `compose` must be a list of shipped config names or YAML paths, got {pieces!r}")
        chain: list[str] = []
        for piece in pieces:
            resolved = resolve_config(piece, relative_to=Path(path).parent)
            if Path(resolved).resolve() in {Path(seen).resolve() for seen in trail + (path,)}:
                raise BenchError(f"{path}: `compose` includes {piece}, which includes {path} again")
            chain += expand(resolved, trail + (path,))
        return chain + [path]

    chain = expand(resolve_config(name_or_path), ())
    return [path for index, path in enumerate(chain) if path not in chain[:index]]


def _bases() -> dict[str, tuple[type, dict[str, type]]]:
    from bench.attacks.base import Attack
    from bench.datamodules.base import PrivacyDataModule
    from bench.modules.base import PrivacyModule

    return {
        "method": (PrivacyModule, methods()),
        "datamodule": (PrivacyDataModule, datamodules()),
        "attack": (Attack, attacks()),
    }


def resolve_class(kind: str, name: str, allow_import: bool = False) -> type:
    """The class ``name`` of ``kind`` (method, datamodule or attack), or one clear error.

    ``name`` is a registered class's name (``RAN``) or dotted path (``bench.modules.RAN``). With
    ``allow_import`` (only for names the user typed: ``--model mypkg.methods.MyMethod``) a dotted path
    outside the registry is imported and must name a concrete subclass of the kind's base class.
    Names read from checkpoints or records must not choose code to import: they resolve without it.
    """
    base, table = _bases()[kind]
    if not isinstance(name, str) or not name:
        raise BenchError(f"a {kind} class must be named by a non-empty string, got {name!r}")
    if name in table:
        return table[name]
    module_name, _, attribute = name.rpartition(".")
    # a registered class under any module path that is already imported (bench.modules.RAN, bench.modules.ran.RAN)
    found = getattr(sys.modules.get(module_name), attribute, None) if module_name else None
    if isinstance(found, type) and found in table.values():
        return found
    if not (module_name and allow_import):
        hint = (
            (
                "; a checkpoint or record may only name those: a class of your own package is given by its dotted "
                "path on the command line (--model/--data pkg.Class), which imports it"
            )
            if module_name
            else ""
        )
        raise BenchError(
            f"unknown {kind} '{name}': not a registered {kind} of this bench; available: {', '.join(table)} "
            f"(see `bench list`){hint}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BenchError(
            f"cannot import {kind} '{name}' ({error}); is its package installed or on PYTHONPATH?"
        ) from error
    found = getattr(module, attribute, None)
    if found is None:
        raise BenchError(f"module {module_name} has no {attribute}; is '{name}' spelled right?")
    if not (isinstance(found, type) and issubclass(found, base)):
        raise BenchError(f"'{name}' is not a {kind}: it must be a subclass of {base.__module__}.{base.__qualname__}")
    if found.__dict__.get("abstract", False):
        raise BenchError(f"'{name}' is an abstract base (abstract = True in its body); give a concrete {kind}")
    return register(kind, found)


def register(kind: str, cls: type) -> type:
    """Register a class the user names (in code, or by dotted path on the command line) for this process.

    Later lookups by its dotted path find it: the checkpoint its fit writes, the records it makes, `bench list`.
    """
    base, table = _bases()[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls.__dict__.get("abstract", False):
        raise BenchError(f"{cls!r} is not a concrete {kind}: a subclass of {base.__module__}.{base.__qualname__}")
    if cls not in table.values():
        _NAMED[kind][f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def lookup(kind: str, name: str) -> type:
    """The registered class ``name`` of ``kind``, never importing anything (see :func:`resolve_class`)."""
    return resolve_class(kind, name, allow_import=False)
