"""A test mixin that records the update schedule of a method trained by manual optimization."""

from __future__ import annotations

import torch


class StepRecorder:
    """Records, for every optimizer step, its name and which of ``recorded_parts`` changed their weights.

    For methods whose optimizer steps all go through ``_step(optimizer, loss, name)`` (RAN, MCMIA's
    Min-Max, ComplexNet): ``class _Recording(StepRecorder, RAN): recorded_parts = ("encoder", ...)`` (a leading underscore keeps
    such test classes out of the registry).
    """

    recorded_parts: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[str, frozenset[str]]] = []

    def _step(self, optimizer, loss, name):
        parts = {part: getattr(self, part) for part in self.recorded_parts}
        before = {part: [p.detach().clone() for p in net.parameters()] for part, net in parts.items()}
        super()._step(optimizer, loss, name)
        changed = frozenset(part for part, net in parts.items()
                            if any(not torch.equal(a, b) for a, b in zip(before[part], net.parameters())))
        self.steps.append((name, changed))
