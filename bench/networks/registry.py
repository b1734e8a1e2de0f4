"""Every network of the suite under one name, and the roles it is defined for.

**Names.** Lowercase; torchvision's name where torchvision has the architecture (``vgg16``, ``resnet18``,
``mobilenet_v2``, ``alexnet``); otherwise the name the architecture is known by without punctuation
(LeNet-5 is ``lenet5``, ResNet-20 ``resnet20``, Geiping et al.'s ConvNet ``convnet``) or, for a network
without one, its family and number of weight layers (``cnn4``: the 4-layer CNN; ``vgg9``: a VGG of nine
weight layers). A variant of an architecture follows an underscore: the split point (``resnet56_alpha``),
or whose version it is (``lenet_tfslim``: TF-slim's LeNet). One architecture has one name in every role,
even where a role builds it its own way (LeNet-5's split encoder has batch-norm; its whole-image
classifier, for DP-SGD's per-sample gradients, has none). The names retired in a rename
(:data:`bench.deprecation.RENAMED_NETWORKS`: ``lenet``, ``vgg``) still work, with a warning, for one release.

**Roles.** How a method uses a network, and what its builder returns:

* ``split``: (encoder, classifier), the client's convolutions and the server's MLP (SplitNetwork, RAN,
  NoisyInput, ResizedDNN);
* ``classifier``: one whole-image classifier (MCMIA, DPSGD);
* ``complex``: the plans of the encryption, processing and decryption modules, built real- or complex-valued
  by :func:`bench.networks.complex.build_modules` (ComplexNet, ComplexNetBaseline);
* ``collaborative``: a gradient-sharing target with a base ``width`` (Collaborative, ``bench.ats.search``);
* ``compressive``: the server's classifier on image estimates (DCM and the DCMG variants).

A method checks its ``network`` argument with :func:`resolve_network` before building anything, and records
the name it resolved. ``bench list`` prints the table.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from bench.deprecation import RENAMED_NETWORKS, warn_renamed
from bench.errors import BenchError
from bench.networks import ats, classifiers, compressive, split
from bench.networks import complex as complex_plans
from bench.spec import DataSpec


class Role(str, enum.Enum):
    SPLIT = "split"
    CLASSIFIER = "classifier"
    COMPLEX = "complex"
    COLLABORATIVE = "collaborative"
    COMPRESSIVE = "compressive"

    @property
    def description(self) -> str:
        return _ROLE_DESCRIPTIONS[self]


_ROLE_DESCRIPTIONS = {
    Role.SPLIT: "a split network (encoder, classifier)",
    Role.CLASSIFIER: "a whole-image classifier",
    Role.COMPLEX: "a network with encryption / processing / decryption modules",
    Role.COLLABORATIVE: "a gradient-sharing target",
    Role.COMPRESSIVE: "a classifier of compressive learning",
}


@dataclass(frozen=True)
class Architecture:
    """One architecture: its name, and per role the builder ``builder(spec, *name groups, **options)``.

    ``pattern`` names a family of depths (``resnet<6n+2>_<alpha|beta>``): a name matches it whole, and its
    groups go to the builder after the spec.
    """

    name: str
    title: str
    builders: Mapping[Role, Callable[..., Any]]
    pattern: Optional[str] = None
    _compiled: Optional[re.Pattern] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.pattern) if self.pattern else None)

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(self.builders)

    def groups(self, name: str) -> Optional[tuple[str, ...]]:
        """The builder's extra arguments when ``name`` is this architecture's, else None."""
        if self._compiled is None:
            return () if name == self.name else None
        match = self._compiled.fullmatch(name)
        return match.groups() if match else None


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "lenet5",
        "LeNet-5",
        {
            Role.SPLIT: functools.partial(split.split_network, split.LENET5),
            Role.CLASSIFIER: classifiers.lenet5,
            Role.COMPLEX: complex_plans.lenet5_plans,
        },
    ),
    Architecture(
        "vgg9",
        "VGG-11's first four blocks with a 3-layer head (9 weight layers)",
        {
            Role.SPLIT: functools.partial(split.split_network, split.VGG9),
        },
    ),
    Architecture(
        "vgg16",
        "VGG-16",
        {
            Role.SPLIT: functools.partial(split.split_network, split.VGG16),
            Role.CLASSIFIER: classifiers.vgg16,
            Role.COMPLEX: complex_plans.vgg16_plans,
        },
    ),
    Architecture("alexnet", "AlexNet", {Role.COMPLEX: complex_plans.alexnet_plans}),
    Architecture("resnet18", "ResNet-18 (3x3 stride-1 stem)", {Role.CLASSIFIER: classifiers.resnet18}),
    Architecture("resnet20", "ResNet-20", {Role.COLLABORATIVE: ats.ResNet20}),
    Architecture(
        "resnet<6n+2>_<alpha|beta>",
        "ResNet-(6n+2) split at alpha or beta (e.g. resnet56_alpha)",
        {
            Role.COMPLEX: lambda spec, depth, variant: complex_plans.resnet_plans(spec, int(depth), variant),
        },
        pattern=r"resnet(\d+)_(alpha|beta)",
    ),
    Architecture("mobilenet_v2", "MobileNetV2 (stride-1 stem)", {Role.CLASSIFIER: classifiers.mobilenet_v2}),
    Architecture("cnn4", "the 4-layer CNN of the DP comparison", {Role.CLASSIFIER: classifiers.cnn4}),
    Architecture("convnet", "the 8-layer ConvNet of Geiping et al.", {Role.COLLABORATIVE: ats.ConvNet}),
    Architecture(
        "lenet_tfslim",
        "TF-slim's LeNet (32 and 64 channels, 1024 hidden units)",
        {
            Role.COMPRESSIVE: compressive.lenet_classifier,
        },
    ),
)


def network_names(role: Role | str) -> list[str]:
    """The names valid for ``role``, in the table's order."""
    role = Role(role)
    return [architecture.name for architecture in ARCHITECTURES if role in architecture.builders]


def _find(name: str) -> Optional[tuple[Architecture, tuple[str, ...]]]:
    for architecture in ARCHITECTURES:
        groups = architecture.groups(name)
        if groups is not None:
            return architecture, groups
    return None


def resolve_network(name: Any, role: Role | str, owner: Optional[str] = None) -> str:
    """The current name of network ``name`` for ``role``; a retired name warns, a wrong one raises one line.

    ``owner`` (a method's class name) says whose argument it is in the messages.
    """
    role = Role(role)
    who = owner or "bench"
    valid = ", ".join(network_names(role))
    if not isinstance(name, str):
        raise BenchError(f"{who}: the network is a name, got {name!r}; {who} takes {valid}")
    current = RENAMED_NETWORKS.get(name, name)
    found = _find(current)
    if found is None:
        raise BenchError(f"{who}: unknown network '{name}'; {who} takes {role.description}: {valid}")
    if role not in found[0].builders:
        roles = " and ".join(r.value for r in found[0].roles)
        raise BenchError(f"{who}: network '{name}' is defined as {roles} only; {who} takes {role.description}: {valid}")
    if current != name:
        warn_renamed(who, "network", name, current)
    return current


def build_network(name: str, role: Role | str, spec: DataSpec, owner: Optional[str] = None, **options: Any) -> Any:
    """Network ``name`` in ``role`` adapted to ``spec`` (what the role's builders return; see the module's text)."""
    role = Role(role)
    name = resolve_network(name, role, owner)
    architecture, groups = _find(name)
    return architecture.builders[role](spec, *groups, **options)


def build_split_network(name: str, spec: DataSpec) -> tuple[Any, Any]:
    """The (encoder, classifier) pair of split network ``name`` adapted to ``spec``."""
    return build_network(name, Role.SPLIT, spec)
