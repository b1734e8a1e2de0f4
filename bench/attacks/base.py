"""The attack interface: every attack belongs to one threat model and scores one trained method."""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch

from bench.spec import TASKS
from bench.threat_models import Capability, Role, ThreatModel

if TYPE_CHECKING:
    from bench.datamodules.base import PrivacyDataModule
    from bench.metrics.reconstruction import ExampleImages
    from bench.modules.base import PrivacyModule


@dataclass
class AttackResult:
    metrics: dict[str, float]
    #: originals and what the attack made of them, for the record's grid, when the attack reconstructs images
    examples: Optional[ExampleImages] = None
    #: what the attack decided at run time (e.g. the decoder it fell back to)
    details: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class of the harness's attacks.

    Subclasses set the class attributes and implement :meth:`run`. Their ``__init__`` arguments
    are their configuration: stored under the same names, reported in every record, and
    configurable from YAML or the command line (``--evaluation.attacks``).
    """

    abstract: ClassVar[bool] = True  # set in a class body: the registry skips abstract bases
    name: ClassVar[str]
    threat_model: ClassVar[ThreatModel]
    #: metric -> "higher" or "lower": which way the metric means *more* privacy for the defender
    metric_directions: ClassVar[dict[str, str]]
    #: the metric the leaderboard plots against accuracy
    primary_metric: ClassVar[str]
    #: adversary (uses only what its threat model grants) or diagnostic (uses the method's own parts)
    role: ClassVar[Role]
    #: capabilities a method must declare for this attack to apply (beyond the threat model)
    requires: ClassVar[tuple[Capability, ...]] = ()
    #: the data spec's tasks the attack handles (see :mod:`bench.spec`); an attack that needs one class per image
    #: (a loss on the true label, label recovery) declares ("multiclass",), and the harness records it as skipped
    tasks: ClassVar[tuple[str, ...]] = TASKS
    #: the fewest samples per pool this attack can work with; the harness checks them before training starts
    min_pool_sizes: ClassVar[dict[str, int]] = {}
    #: arguments that change how the attack reports, not what it measures (left out of records)
    presentation_args: ClassVar[tuple[str, ...]] = ("progress",)
    #: init arguments that set a learned attacker's training budget (maximum epochs, patience); the
    #: harness's budget check reruns the attack with them scaled (:meth:`with_budget`). Empty: nothing learned.
    budget_args: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        for attribute in ("name", "threat_model", "metric_directions", "primary_metric", "role"):
            if not hasattr(cls, attribute):
                raise TypeError(f"attack {cls.__name__} must declare `{attribute}`")
        if not isinstance(cls.role, Role):
            raise TypeError(f"attack {cls.__name__}.role must be Role.ADVERSARY or Role.DIAGNOSTIC, got {cls.role!r}")
        if not isinstance(cls.threat_model, ThreatModel):
            raise TypeError(f"attack {cls.__name__}.threat_model must be a ThreatModel, got {cls.threat_model!r}")
        if cls.primary_metric not in cls.metric_directions:
            raise TypeError(
                f"attack {cls.__name__}: primary_metric '{cls.primary_metric}' has no entry in metric_directions"
            )
        bad = {metric: way for metric, way in cls.metric_directions.items() if way not in ("higher", "lower")}
        if bad:
            raise TypeError(f"attack {cls.__name__}: metric_directions must be 'higher' or 'lower', got {bad}")
        if not cls.tasks or any(task not in TASKS for task in cls.tasks):
            raise TypeError(
                f"attack {cls.__name__}.tasks must be a non-empty subset of {list(TASKS)}, got {cls.tasks!r}"
            )
        for capability in cls.requires:
            if not isinstance(capability, Capability) or capability.threat_model is not cls.threat_model:
                raise TypeError(
                    f"attack {cls.__name__} requires {capability!r}, which is not a capability of "
                    f"threat model '{cls.threat_model.value}'"
                )

    def applies_to(self, module: "PrivacyModule") -> bool:
        """Whether the harness runs this attack on ``module`` (a method class: its declarations only)."""
        return self._offered_by(module) and self._handles(module)

    def _handles(self, module: "PrivacyModule") -> bool:
        spec = getattr(module, "spec", None)  # a method class has no data spec yet
        return spec is None or spec.task in self.tasks

    def _offered_by(self, module: "PrivacyModule") -> bool:
        declared = getattr(module, "capabilities", ())
        return self.threat_model in module.threat_models and all(capability in declared for capability in self.requires)

    def not_applicable_reason(self, module: "PrivacyModule") -> Optional[str]:
        """Why an attack of ``module``'s threat models does not apply to it (None: it applies, or the method
        never offered what it needs, which is no news for the record)."""
        if self._offered_by(module) and not self._handles(module):
            return (
                f"{self.name} handles {' or '.join(self.tasks)} targets; {module.spec.name} has "
                f"{module.spec.task} targets"
            )
        return None

    def pool_problem(self, sizes: dict[str, int]) -> Optional[str]:
        """Why this attack cannot run on pools of these ``sizes`` (pool -> samples), or None when it can.

        The harness asks before training, so that an attack never fails for its pools after the work is done. The
        default checks :attr:`min_pool_sizes`; an attack whose need depends on its configuration (queries it
        holds out, images per gradient) overrides this and raises the same message at run time.
        """
        short = [
            f"{pool} pool {sizes.get(pool, 0)} (needs {count})"
            for pool, count in self.min_pool_sizes.items()
            if sizes.get(pool, 0) < count
        ]
        return ", ".join(short) or None

    def config(self) -> dict[str, Any]:
        """The attack's init arguments and their values (those that change what it measures)."""
        names = [
            p
            for p in inspect.signature(type(self).__init__).parameters
            if p != "self" and p not in self.presentation_args
        ]
        return {name: getattr(self, name) for name in names if hasattr(self, name)}

    def with_budget(self, factor: int) -> "Attack":
        """A copy of this attack whose training budget (every ``budget_args`` value) is ``factor`` times larger."""
        scaled = copy.copy(self)
        for name in self.budget_args:
            setattr(scaled, name, getattr(self, name) * factor)
        return scaled

    def run(self, module: "PrivacyModule", datamodule: "PrivacyDataModule", generator: torch.Generator) -> AttackResult:
        """Attack the trained ``module`` using ``datamodule``'s pools; draw all randomness from ``generator``."""
        raise TypeError(f"{type(self).__name__} must implement run()")
