"""Methods of the suite: one LightningModule per method, each on :class:`PrivacyModule`.

Importing this package, or ``bench.modules.base`` for the base class, loads no method: each loads when it is
named (``from bench.modules import RAN``, or ``bench.registry.methods()`` for all of them), so a user's method,
or an attack that only needs the base class, pays for none of the suite's.
"""

import importlib

from bench.modules.base import PrivacyModule

#: method -> the module of this package that defines it
_DEFINED_IN = {
    "Collaborative": "collaborative",
    "ComplexNet": "complex_net",
    "ComplexNetBaseline": "complex_net",
    "DCM": "dcmg",
    "DCMG": "dcmg",
    "DCMGN": "dcmg",
    "DCMGO": "dcmg",
    "DPSGD": "dpsgd",
    "MCMIA": "mcmia",
    "NoisyInput": "noisy_input",
    "RAN": "ran",
    "ResizedDNN": "resized_dnn",
    "SplitNetwork": "split_network",
}

__all__ = ["PrivacyModule", *_DEFINED_IN]


def __getattr__(name: str):
    if name in _DEFINED_IN:
        return getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_DEFINED_IN))
