"""Shadow (reference) models "trained like the target", for the membership-inference attacks.

``count`` untrained copies of a method (``module.fresh_copy()``: same class and hyper-parameters)
trained on subsets of the attacker pool by one of two recipes:

``target``  the target's own recipe, through a Lightning ``Trainer``: its ``training_step``
            (e.g. MCMIA's Min-Max term, DP-SGD's clipping and noise), its optimizers and
            schedulers, the callbacks the module declares (``configure_callbacks()``: e.g. ADMM
            pruning and masked retraining) and the training callbacks of the Trainer that fitted it
            (rebuilt through their ``fresh_copy()``, or copied when they hold no state), and the
            target DataModule's training augmentation. One shadow after another.
``plain``   cross-entropy with the target's first optimizer, all copies as one batched run: their
            parameters stacked along a leading model dimension, run as ONE grouped network
            (grouped convolutions, batched matrix products: :mod:`bench.batching.grouped_networks`)
            when the network is a plain ``nn.Sequential`` of such layers, otherwise
            ``torch.func.functional_call`` under ``vmap``. This *is* the target's recipe when the
            target trains by plain cross-entropy (automatic optimization, no callbacks, no
            schedulers; see :func:`plain_recipe_gap`), and ``recipe="auto"`` then picks it for its speed.

``benchmarks/shadow_training.py`` measures the batched run against one model at a time and its floor.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import (
    Checkpoint,
    DeviceStatsMonitor,
    EarlyStopping,
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
    ThroughputMonitor,
    Timer,
)
from lightning.pytorch.cli import SaveConfigCallback
from torch import Tensor
from torch.func import functional_call, replace_all_batch_norm_modules_, stack_module_state
from torch.utils.data import DataLoader

from bench.batching.grouped_networks import grouped_network
from bench.datamodules.base import ImagePool, collate_batch
from bench.errors import BenchError
from bench.modules.base import PrivacyModule

RECIPES = ("auto", "target", "plain")
#: callbacks that watch or save a fit without changing what each step trains (early stopping and timers only say
#: when a fit ends: shadows train the attack's ``shadow_epochs``)
BOOKKEEPING = (
    Checkpoint,
    DeviceStatsMonitor,
    EarlyStopping,
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
    SaveConfigCallback,
    ThroughputMonitor,
    Timer,
)


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


def _schedulers_or_none(module) -> Optional[bool]:
    """Whether the module's ``configure_optimizers`` returns learning-rate schedulers.

    None: it needs a Trainer to say.
    """
    try:
        configured = module.configure_optimizers()
    except (RuntimeError, AttributeError):
        return None
    if isinstance(configured, dict):
        return configured.get("lr_scheduler") is not None
    if isinstance(configured, (list, tuple)):
        if len(configured) == 2 and isinstance(configured[1], (list, tuple)) and configured[1]:
            return True
        return any(isinstance(c, dict) and c.get("lr_scheduler") is not None for c in configured)
    return False


def _is_training_callback(callback) -> bool:
    # the suite's own reporting callbacks (the evaluation, console lines) say so with `part_of_training_recipe = False`
    return not isinstance(callback, BOOKKEEPING) and getattr(callback, "part_of_training_recipe", True)


def recipe_callbacks(module) -> list[Callable[[], Any]]:
    """Factories of the training callbacks of the target's recipe beyond those the module declares itself.

    They are the Trainer's that fitted ``module`` (when it is still attached: the harness at the end of
    fit), minus bookkeeping (checkpoints, progress, the evaluation) and the module's own
    ``configure_callbacks()`` (every shadow gets fresh ones from its own copy). Each is rebuilt by its
    ``fresh_copy()``, or deep-copied when it holds no state; any other raises :class:`BenchError`
    (the recipe cannot be rebuilt), before anything trains.
    """
    trainer = module._trainer if isinstance(module, L.LightningModule) else None
    if trainer is None:
        return []
    own = module.configure_callbacks() or []
    own_types = {type(c) for c in (own if isinstance(own, (list, tuple)) else [own])}
    factories = []
    for callback in trainer.callbacks:
        if not _is_training_callback(callback) or type(callback) in own_types:
            continue
        if callable(getattr(callback, "fresh_copy", None)):
            factories.append(callback.fresh_copy)
        elif not callback.state_dict():
            factories.append(lambda callback=callback: copy.deepcopy(callback))
        else:
            raise BenchError(
                f"the target was trained with the callback {type(callback).__name__}, which holds state and has "
                "no fresh_copy(): shadow models cannot be trained by the target's recipe; give it a "
                "fresh_copy() or declare it in the module's configure_callbacks(), or use recipe='plain'"
            )
    return factories


def plain_recipe_gap(module, augmented: bool = False) -> Optional[str]:
    """Why plain cross-entropy with the first optimizer would not be the target's recipe (None: it would be).

    ``augmented``: the target's DataModule augments its training pool (the plain batched path does not).
    """
    if augmented:
        return "its training data is augmented"
    if not getattr(module, "automatic_optimization", True):
        return "it optimizes manually (its own training_step)"
    default_step = getattr(type(module), "training_step", None) is PrivacyModule.training_step
    if not getattr(module, "plain_training_step", default_step):
        return "its training_step is not plain cross-entropy"
    declared = module.configure_callbacks() if hasattr(module, "configure_callbacks") else []
    if declared:
        return f"it trains with callbacks {[type(c).__name__ for c in declared]}"
    if recipe_callbacks(module):
        return "its Trainer had training callbacks"
    schedulers = _schedulers_or_none(module)
    if schedulers is None:
        return "its optimizers can only be built inside a Trainer"
    if schedulers:
        return "it uses learning-rate schedulers"
    return None


@contextlib.contextmanager
def _quiet_lightning():
    """A shadow's fit without Lightning's per-fit banner (devices, tips) and its no-validation notice, K times over."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader.*")
            yield
    finally:
        logger.setLevel(level)


class _ShadowData(L.LightningDataModule):
    """One shadow's data as the bench pools a method may ask for.

    Its members, and its out-samples as the reference set.
    """

    def __init__(self, images: Tensor, labels: Tensor, members: Tensor, batch_size: int, transform=None) -> None:
        super().__init__()
        pixels = (images * 255).round().to(torch.uint8).cpu()  # the pools' images are uint8 / 255: exact
        labels = labels.cpu()
        inside, outside = members.nonzero().squeeze(1), (~members).nonzero().squeeze(1)
        self._pools = {
            "train": ImagePool(pixels[inside], labels[inside], transform),
            "val": ImagePool(pixels[outside], labels[outside]),
            "nonmember": ImagePool(pixels[outside], labels[outside]),
        }
        self.batch_size = self.eval_batch_size = batch_size

    def pool(self, name: str) -> ImagePool:
        if name not in self._pools:
            raise BenchError(f"a shadow model's recipe asked for the '{name}' pool, which shadows do not have")
        return self._pools[name]

    def pool_dataloader(self, name: str, shuffle: bool = False, batch_size: Optional[int] = None) -> DataLoader:
        return DataLoader(
            self.pool(name), batch_size=batch_size or self.batch_size, shuffle=shuffle, collate_fn=collate_batch
        )

    def train_dataloader(self) -> DataLoader:
        return self.pool_dataloader("train", shuffle=True)


class ShadowModels:
    """``count`` untrained copies of the target (``module.fresh_copy()``).

    They are trained by the target's recipe or the plain one.

    Plain recipe: parameters of the copies are stacked along a leading model dimension; a forward
    is one grouped network (``grouped=True`` and the network has a grouped form that gives the
    copies' own outputs on a probe: ``batching == "grouped"``), else one ``vmap`` over
    ``functional_call`` (``"vmap"``). Summing the copies' mean losses gives each copy the
    gradient of its own loss, and the optimizers of the suite are element-wise, so one optimizer
    over the stacked tensors is ``count`` independent optimizers. Batch-norm layers normalise with
    the batch's statistics (``replace_all_batch_norm_modules_``: running statistics cannot be
    updated in place under ``vmap``). ``vectorize=False`` trains the same copies one after the
    other in one loop (``"sequential"``, the benchmark's reference); ``"auto"`` vectorizes when
    the network is grouped or runs under ``vmap`` (no ``.item()``, no in-place random ops on
    unbatched tensors) and falls back to one copy at a time otherwise.

    Target recipe: every copy is fitted by its own ``Trainer`` (see the module docstring).

    Args:
        recipe: ``auto`` (the target's recipe, batched when that is the plain one), ``target`` or ``plain``.
        augmented: the target trained on augmented data (then its recipe is not the plain one).
    """

    def __init__(
        self,
        module,
        count: int,
        generator: torch.Generator,
        device: torch.device,
        vectorize: bool | str = "auto",
        recipe: str = "auto",
        augmented: bool = False,
        grouped: bool = True,
        seeds: Optional[Sequence[int]] = None,
    ) -> None:
        if count < 1:
            raise BenchError(f"an attack needs at least one shadow model, got {count}")
        if recipe not in RECIPES:
            raise BenchError(f"shadow recipe must be one of {RECIPES}, got '{recipe}'")
        fresh_copy = getattr(module, "fresh_copy", None)
        if not callable(fresh_copy):
            raise BenchError(f"{type(module).__name__} has no fresh_copy(): shadow models cannot be trained like it")
        self.recipe_gap = plain_recipe_gap(module, augmented)
        self.recipe = ("plain" if self.recipe_gap is None else "target") if recipe == "auto" else recipe
        # checked now: a recipe that cannot be rebuilt fails before anything trains
        self.callback_factories = recipe_callbacks(module) if self.recipe == "target" else []
        self.count, self.device = count, device
        plain = self.recipe == "plain"
        self.grouped: Optional[Callable] = None  # the copies as one grouped network (plain recipe, batched)
        if seeds is not None and len(seeds) != count:
            raise BenchError(f"ShadowModels: {len(seeds)} seeds for {count} shadow models")
        # with seeds, copy m's initialisation and data order come from seeds[m] alone: the same model in a pool of any
        # size (what lets attacks that need fewer share a pool's first models)
        self._own_generators = None if seeds is None else [torch.Generator().manual_seed(s) for s in seeds]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seeds is None:
                torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
                copies = [fresh_copy() for _ in range(count)]
            else:
                copies = []
                for own in self._own_generators:
                    torch.manual_seed(int(torch.randint(2**31, (1,), generator=own)))
                    copies.append(fresh_copy())
        if plain:
            copies = [replace_all_batch_norm_modules_(c) for c in copies]
        self.copies = [c.to(device).train() for c in copies]
        self.optimizer_class, self.optimizer_settings = _first_optimizer(self.copies[0])
        self.vectorize = bool(vectorize) and plain
        if self.vectorize:
            params, buffers = stack_module_state(self.copies)
            self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
            self.buffers = buffers
            self.base = copy.deepcopy(self.copies[0]).to("meta")
            image_shape = tuple(module.spec.image_shape)
            self.grouped = self._checked_grouped(image_shape) if grouped else None
            if vectorize == "auto" and self.grouped is None:
                self.vectorize = self._runs_under_vmap(image_shape)
        self.batching = ("grouped" if self.grouped is not None else "vmap") if self.vectorize else "sequential"

    def describe(self) -> dict[str, Any]:
        """How the shadows were trained, for the record."""
        return {
            "shadow_recipe": self.recipe,
            "shadow_count": self.count,
            "vectorized_shadows": self.vectorize,
            "shadow_batching": self.batching,
            "why_not_plain": self.recipe_gap,
        }

    def _checked_grouped(self, image_shape: tuple[int, ...]) -> Optional[Callable]:
        """The copies' grouped forward if the network has one and it gives every copy's own logits on a probe."""
        forward = grouped_network(self.copies[0], image_shape)
        if isinstance(forward, str):
            return None
        probe = torch.rand(self.count, 3, *image_shape, generator=torch.Generator().manual_seed(0)).to(self.device)
        with torch.no_grad():
            own = torch.stack([c.eval()(x) for c, x in zip(self.copies, probe)])
            for c in self.copies:
                c.train()
            try:
                grouped = forward(self.params, self.buffers, probe, False)
            except RuntimeError:
                return None
        # the same arithmetic in another order: float32 rounding apart, a forward that is not the Sequential differs
        if grouped.shape != own.shape or not torch.allclose(grouped, own, rtol=1e-4, atol=1e-5):
            return None
        return forward

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
        if self.grouped is not None:
            return self.grouped(self.params, self.buffers, x, train)
        self.base.train(train)

        def one(params, buffers, images):
            return functional_call(self.base, (params, buffers), (images,))

        return torch.vmap(one, randomness="different")(self.params, self.buffers, x)

    def fit(
        self,
        images: Tensor,
        labels: Tensor,
        members: Tensor,
        epochs: int,
        batch_size: int,
        generator: torch.Generator,
        transform=None,
    ) -> Tensor:
        """Train copy m on ``images[members[m]]`` for ``epochs`` epochs.

        Returns the (count, N) mask each copy trained on.

        The plain recipe gives every copy the same number of samples (the smallest member set: larger
        ones lose their last members, which the returned mask leaves out). ``transform``: the target's
        training augmentation (target recipe only).
        """
        if self.recipe == "target":
            self._fit_by_recipe(images, labels, members, epochs, batch_size, generator, transform)
            return members.clone()
        rows = [m.nonzero().squeeze(1) for m in members]
        size = min(len(r) for r in rows)
        rows = torch.stack([r[:size] for r in rows])  # (count, size)
        trained = torch.zeros_like(members, dtype=torch.bool).scatter_(1, rows, True)
        images, labels = images.to(self.device), labels.to(self.device)
        if self.vectorize:
            optimizer = self.optimizer_class(list(self.params.values()), **self.optimizer_settings)
        else:
            optimizers = [self.optimizer_class(c.parameters(), **self.optimizer_settings) for c in self.copies]
        for _ in range(epochs):
            order = self._shuffled(rows, generator)
            for start in range(0, size, batch_size):
                index = order[:, start : start + batch_size].to(self.device)
                x, y = images[index], labels[index]  # (count, B, ...)
                if self.vectorize:
                    logits = self._forward(x, train=True)
                    # sum over copies of each copy's mean loss: each copy gets its own gradient
                    loss = (
                        F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1).sum()
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                else:
                    for m, (model, opt) in enumerate(zip(self.copies, optimizers)):
                        loss = F.cross_entropy(model(x[m]), y[m])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
        return trained

    def _shuffled(self, rows: Tensor, generator: torch.Generator) -> Tensor:
        """Each copy's member rows (count, size) in a fresh random order: from its own generator when it has one."""
        if self._own_generators is None:
            return rows.gather(1, torch.rand(rows.shape, generator=generator).argsort(1))
        return torch.stack(
            [row[torch.rand(len(row), generator=own).argsort()] for row, own in zip(rows, self._own_generators)]
        )

    def _fit_by_recipe(self, images, labels, members, epochs, batch_size, generator, transform) -> None:
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        generators = self._own_generators or [generator] * self.count
        for model, member, own in zip(self.copies, members, generators):
            data = _ShadowData(images, labels, member, batch_size, transform)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), _quiet_lightning():
                # built inside the quiet block: a Trainer's construction prints the device banner ("GPU available")
                trainer = L.Trainer(
                    max_epochs=epochs,
                    accelerator=accelerator,
                    devices=1,
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    num_sanity_val_steps=0,
                    limit_val_batches=0,
                    callbacks=[factory() for factory in self.callback_factories],
                )
                torch.manual_seed(int(torch.randint(2**31, (1,), generator=own)))
                trainer.fit(model, data)
            model._trainer = None  # detached: a shadow's trainer is no part of what the attack keeps
            model.to(self.device).eval()

    def trained_state(self) -> dict[str, Any]:
        """The copies' trained tensors (stacked when batched), for :class:`ShadowCache`."""
        if self.vectorize:
            return {
                "params": {k: v.detach().cpu() for k, v in self.params.items()},
                "buffers": {k: v.detach().cpu() for k, v in self.buffers.items()},
            }
        return {"copies": [{k: v.detach().cpu() for k, v in c.state_dict().items()} for c in self.copies]}

    @torch.no_grad()
    def load_trained_state(self, state: dict[str, Any]) -> None:
        """Set the copies to a :meth:`trained_state`; raises when its names or shapes are not these copies'."""
        if self.vectorize:
            for mine, theirs in ((self.params, state["params"]), (self.buffers, state["buffers"])):
                if set(mine) != set(theirs) or any(mine[k].shape != theirs[k].shape for k in mine):
                    raise ValueError("its tensors are not these models'")
                for k in mine:
                    mine[k].copy_(theirs[k])
            return
        if len(state["copies"]) != self.count:
            raise ValueError("it holds another number of models")
        for model, own in zip(self.copies, state["copies"]):
            model.load_state_dict(own)  # strict: other names or shapes raise
            model.eval()

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Every copy's logits on the same ``images``: (count, N, classes), float64 on the CPU."""
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(self.device)
            if self.vectorize:
                out.append(self._forward(x.unsqueeze(0).expand(self.count, *x.shape), train=False).double().cpu())
            else:
                out.append(torch.stack([c.eval()(x).double().cpu() for c in self.copies]))
        return torch.cat(out, dim=1)


def paired_halves(count: int, size: int, generator: torch.Generator) -> Tensor:
    """(count, size) membership masks for online attacks: pairs of complementary random halves.

    Every sample is in exactly ``count / 2`` copies and out of as many (per-example IN and OUT
    statistics for every sample), every copy holds half of the samples (odd sizes: one more for
    the second of a pair). ``count`` must be even.
    """
    if count < 2 or count % 2:
        raise BenchError(
            f"online attacks pair IN and OUT shadows: they need an even number of shadows >= 2, got {count}"
        )
    halves = random_halves(count // 2, size, generator)
    return torch.stack([halves, ~halves], dim=1).flatten(0, 1)


def random_halves(count: int, size: int, generator: torch.Generator) -> Tensor:
    """(count, size) membership masks, each row a uniformly random half of ``range(size)``."""
    order = torch.rand(count, size, generator=generator).argsort(1)
    members = torch.zeros(count, size, dtype=torch.bool)
    members.scatter_(1, order[:, : size // 2], True)
    return members


# ---------------------------------------------------------------------- one pool per evaluation
