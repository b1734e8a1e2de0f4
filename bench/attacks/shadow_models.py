"""Shadow models "trained like the target", for the membership-inference attacks.

``count`` untrained copies of a method (``module.fresh_copy()``), trained with the target's own
optimizer settings on subsets of the attacker pool, all together as one batched run: their
parameters are stacked along a leading model dimension and ``torch.func.functional_call`` runs
under ``vmap`` (``benchmarks/lira_vectorized.py`` measures the speed-up over one model at a time).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, replace_all_batch_norm_modules_, stack_module_state

from bench.errors import BenchError


def _first_optimizer(module) -> tuple[type, dict[str, Any]]:
    """The class and settings of the target's (first) optimizer: shadows train with the same.

    Adam at the module's ``lr`` when its optimizers can only be built inside a Trainer (e.g. a
    schedule over ``estimated_stepping_batches``).
    """
    fallback = torch.optim.Adam, {"lr": float(module.hparams.get("lr", 1e-3))}
    try:
        configured = module.configure_optimizers()
    except RuntimeError:
        return fallback
    if isinstance(configured, dict):
        configured = configured["optimizer"]
    if isinstance(configured, (list, tuple)):
        configured = configured[0]
        if isinstance(configured, (list, tuple)):  # ([optimizers], [schedulers])
            configured = configured[0]
    if isinstance(configured, dict):
        configured = configured["optimizer"]
    if not isinstance(configured, torch.optim.Optimizer):
        return fallback
    return type(configured), dict(configured.defaults)


class ShadowModels:
    """``count`` untrained copies of the target (``module.fresh_copy()``) trained together with one optimizer.

    Parameters of the copies are stacked along a leading model dimension; a forward is one
    ``vmap`` over ``functional_call``. Summing the copies' mean losses gives each copy the
    gradient of its own loss, and the optimizers of the suite are element-wise, so one
    optimizer over the stacked tensors is ``count`` independent optimizers. Batch-norm layers
    normalise with the batch's statistics (``replace_all_batch_norm_modules_``: running
    statistics cannot be updated in place under ``vmap``).

    ``vectorize=False`` trains the same copies one after the other (the benchmark's reference);
    ``"auto"`` vectorizes when the network runs under ``vmap`` (no ``.item()``, no in-place random
    ops on unbatched tensors) and falls back to one copy at a time otherwise.
    """

    def __init__(self, module, count: int, generator: torch.Generator, device: torch.device,
                 vectorize: bool | str = "auto") -> None:
        if count < 1:
            raise BenchError(f"an attack needs at least one shadow model, got {count}")
        fresh_copy = getattr(module, "fresh_copy", None)
        if not callable(fresh_copy):
            raise BenchError(f"{type(module).__name__} has no fresh_copy(): shadow models cannot be trained like it")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            copies = [replace_all_batch_norm_modules_(fresh_copy()).to(device).train() for _ in range(count)]
        self.optimizer_class, self.optimizer_settings = _first_optimizer(copies[0])
        self.count, self.device, self.copies = count, device, copies
        self.vectorize = bool(vectorize)
        if vectorize:
            params, buffers = stack_module_state(copies)
            self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
            self.buffers = buffers
            self.base = copy.deepcopy(copies[0]).to("meta")
        if vectorize == "auto":
            self.vectorize = self._runs_under_vmap(tuple(module.spec.image_shape))

    def _runs_under_vmap(self, image_shape: tuple[int, ...]) -> bool:
        probe = torch.zeros(self.count, 2, *image_shape, device=self.device)
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
                self._forward(probe, train=True)
                self._forward(probe, train=False)
        except RuntimeError:  # functorch cannot batch some op of this network: train the copies in turn
            return False
        return True

    def _forward(self, x: Tensor, train: bool) -> Tensor:
        """Logits of every copy on its own batch: x (count, B, ...) -> (count, B, classes)."""
        self.base.train(train)

        def one(params, buffers, images):
            return functional_call(self.base, (params, buffers), (images,))

        return torch.vmap(one, randomness="different")(self.params, self.buffers, x)

    def fit(self, images: Tensor, labels: Tensor, members: Tensor, epochs: int, batch_size: int,
            generator: torch.Generator) -> None:
        """Train copy m on ``images[members[m]]`` for ``epochs`` epochs (every copy gets the same number of samples)."""
        rows = [m.nonzero().squeeze(1) for m in members]
        size = min(len(r) for r in rows)
        rows = torch.stack([r[:size] for r in rows])  # (count, size)
        images, labels = images.to(self.device), labels.to(self.device)
        if self.vectorize:
            optimizer = self.optimizer_class(list(self.params.values()), **self.optimizer_settings)
        else:
            optimizers = [self.optimizer_class(c.parameters(), **self.optimizer_settings) for c in self.copies]
        for _ in range(epochs):
            order = rows.gather(1, torch.rand(rows.shape, generator=generator).argsort(1))
            for start in range(0, size, batch_size):
                index = order[:, start : start + batch_size].to(self.device)
                x, y = images[index], labels[index]  # (count, B, ...)
                if self.vectorize:
                    logits = self._forward(x, train=True)
                    # sum over copies of each copy's mean loss: each copy gets its own gradient
                    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1).sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                else:
                    for m, (model, opt) in enumerate(zip(self.copies, optimizers)):
                        loss = F.cross_entropy(model(x[m]), y[m])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Every copy's logits on the same ``images``: (count, N, classes), on the CPU."""
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(self.device)
            if self.vectorize:
                out.append(self._forward(x.unsqueeze(0).expand(self.count, *x.shape), train=False).float().cpu())
            else:
                out.append(torch.stack([c.eval()(x).float().cpu() for c in self.copies]))
        return torch.cat(out, dim=1)


def random_halves(count: int, size: int, generator: torch.Generator) -> Tensor:
    """(count, size) membership masks, each row a uniformly random half of ``range(size)``."""
    order = torch.rand(count, size, generator=generator).argsort(1)
    members = torch.zeros(count, size, dtype=torch.bool)
    members.scatter_(1, order[:, : size // 2], True)
    return members
