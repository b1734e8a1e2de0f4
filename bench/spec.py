"""What a network needs to know about a dataset: the :class:`DataSpec` (its own module, so that networks,
methods and attacks import it without importing the DataModules, Lightning or the datasets).

``task`` says what a target is:

``multiclass``  one class index per image (``num_classes`` classes); cross-entropy, top-1 accuracy
``multilabel``  a vector of ``num_classes`` binary attributes per image (e.g. CelebA's 40); binary
                cross-entropy on each attribute's logit, accuracy per attribute and their mean
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from bench.errors import BenchError

TASKS = ("multiclass", "multilabel")


@dataclass(frozen=True)
class DataSpec:
    """What a network needs to know about a dataset to adapt to it.

    ``num_classes`` is the width of the network's output: classes for ``multiclass``, binary
    attributes for ``multilabel``.
    """

    name: str
    image_shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    task: str = "multiclass"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise BenchError(f"DataSpec task must be one of {list(TASKS)}, got '{self.task}'")

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @classmethod
    def coerce(cls, value: "DataSpec | Mapping[str, Any]") -> "DataSpec":
        """Accept a DataSpec or its dict form (as stored in checkpoints' hyper-parameters).

        Checkpoints written before ``task`` existed are multiclass.
        """
        if isinstance(value, DataSpec):
            return value
        fields = dict(value)
        return cls(
            name=str(fields["name"]),
            image_shape=tuple(int(v) for v in fields["image_shape"]),  # type: ignore[arg-type]
            num_classes=int(fields["num_classes"]),
            mean=tuple(float(v) for v in fields["mean"]),
            std=tuple(float(v) for v in fields["std"]),
            task=str(fields.get("task", "multiclass")),
        )

    def as_dict(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["image_shape"] = list(self.image_shape)
        spec["mean"], spec["std"] = list(self.mean), list(self.std)
        return spec
