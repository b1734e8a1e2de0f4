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
import hashlib
import json
import logging
import sys
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
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
def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (SHA-256 of their text): one independent stream per pool, model and purpose."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def data_fingerprint(images: Tensor, labels: Tensor) -> str:
    """SHA-256 of the samples a pool trains on (shapes, pixels, labels): pools on other data are other pools."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class PoolRecipe:
    """What makes two attacks' shadows the same models, beyond the data and the evaluation seed.

    ``kind``: ``offline`` (random halves of the attacker pool: LiRA, RMIA, loss-threshold calibration,
    Shokri, nasr_shadow) or ``online`` (paired IN/OUT halves of the queries and the attacker pool:
    LiRA online, RMIA online).
    """

    kind: str
    epochs: int
    batch_size: int
    recipe: str


class PooledShadows:
    """The first ``count`` models of a :class:`ShadowPool`, read like one :class:`ShadowModels`."""

    def __init__(self, chunks: list[ShadowModels], count: int, pool: dict[str, Any]) -> None:
        self.chunks, self.count, self.pool = chunks, count, pool

    def logits(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Each of the ``count`` models' logits on ``images``: (count, N, classes), float64 on the CPU."""
        out, left = [], self.count
        for chunk in self.chunks:
            if left <= 0:
                break
            out.append(chunk.logits(images, batch_size)[:left])
            left -= chunk.count
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        """How the shadows were trained and which pool they came from, for the record."""
        return {**self.chunks[0].describe(), "shadow_count": self.count, "shadow_pool": dict(self.pool)}


@dataclass
class _Pool:
    recipe: PoolRecipe
    data: str  # the data fingerprint
    chunks: list[ShadowModels] = field(default_factory=list)
    trained: Optional[Tensor] = None  # (size, N): the samples each model trained on

    @property
    def size(self) -> int:
        return sum(chunk.count for chunk in self.chunks)


class ShadowPool:
    """Shadow models trained once per evaluation by the target's recipe, shared by every attack that can use them.

    Model m of a pool is determined by the evaluation ``seed``, the pool's :class:`PoolRecipe` and
    data, and m alone (its initialisation, its half of the data and its data order come from seeds
    derived from those): an attack that needs k models takes the pool's first k, the very models it
    would have trained alone with the same seed. A pool grows when an attack needs more; the harness
    :meth:`plan`\\ s each pool's size first (the most any of its attacks needs), so that the models
    train in one batched run.
    """

    def __init__(self, seed: int, shared: bool = True, cache_dir: Optional[str | Path] = None) -> None:
        self.seed, self.shared = int(seed), shared
        self._planned: dict[PoolRecipe, int] = {}
        self._pools: dict[tuple[PoolRecipe, str], _Pool] = {}
        self.models_trained = 0
        #: trained models kept on disk, keyed by everything that determines them (see :class:`ShadowCache`)
        self.cache = None if cache_dir is None else ShadowCache(Path(cache_dir))
        self.models_loaded = 0

    def plan(self, recipe: PoolRecipe, count: int) -> None:
        """Size the pool of ``recipe`` for an attack that will need ``count`` of its models."""
        self._planned[recipe] = max(self._planned.get(recipe, 0), count)

    def draw(
        self, module, recipe: PoolRecipe, count: int, images: Tensor, labels: Tensor, augmentation=None
    ) -> tuple[PooledShadows, Tensor]:
        """The pool's first ``count`` models on ``images`` and the (count, N) masks of the samples they trained on."""
        fingerprint = data_fingerprint(images, labels)
        pool = self._pools.setdefault((recipe, fingerprint), _Pool(recipe, fingerprint))
        if pool.size < count:
            self._grow(pool, module, max(count, self._planned.get(recipe, 0)), images, labels, augmentation)
        info = {"kind": recipe.kind, "size": pool.size, "used": count, "shared": self.shared, "data": fingerprint[:12]}
        return PooledShadows(pool.chunks, count, info), pool.trained[:count]

    def membership(self, kind: str, model: int, size: int) -> Tensor:
        """Model ``model``'s half of ``size`` samples: a random half (offline), or the half or the complement of its
        pair's (online: models 2p and 2p + 1 split the samples, so every sample is IN half of the models)."""
        stream = model // 2 if kind == "online" else model
        generator = torch.Generator().manual_seed(derived_seed(self.seed, kind, "members", stream))
        half = random_halves(1, size, generator)[0]
        return ~half if kind == "online" and model % 2 else half

    def _grow(self, pool: _Pool, module, size: int, images: Tensor, labels: Tensor, augmentation) -> None:
        recipe, new = pool.recipe, range(pool.size, size)
        members = torch.stack([self.membership(recipe.kind, m, len(images)) for m in new])
        seeds = [derived_seed(self.seed, recipe.kind, "model", m) for m in new]
        chunk = ShadowModels(
            module,
            len(new),
            torch.Generator().manual_seed(seeds[0]),
            module.device,
            recipe=recipe.recipe,
            augmented=augmentation is not None,
            seeds=seeds,
        )
        key = None if self.cache is None else cache_key(module, chunk, recipe, pool.data, self.seed, new, augmentation)
        trained = None if key is None else self.cache.load(key, chunk, members)
        if trained is None:
            trained = chunk.fit(
                images, labels, members, recipe.epochs, recipe.batch_size, torch.Generator(), transform=augmentation
            )
            self.models_trained += len(new)
            if key is not None:
                self.cache.save(key, chunk, trained)
        else:
            self.models_loaded += len(new)
        pool.chunks.append(chunk)
        pool.trained = trained if pool.trained is None else torch.cat([pool.trained, trained])

    def sizes(self) -> dict[str, int]:
        """How many models this evaluation trained for each kind of pool (offline, online), for the record's cost."""
        sizes: dict[str, int] = {}
        for pool in self._pools.values():
            sizes[pool.recipe.kind] = sizes.get(pool.recipe.kind, 0) + pool.size
        return sizes


# ---------------------------------------------------------------------- reuse across runs
#: the version of how a pool's models are drawn and trained: a change to it retires every cached model
POOL_FORMAT = 1


def cache_key(
    module, chunk: ShadowModels, recipe: PoolRecipe, data: str, seed: int, models: range, augmentation
) -> dict[str, Any]:
    """Everything that determines a chunk of a pool's models: the target's class and hyper-parameters, the recipe as
    resolved (and its callbacks), the data, the evaluation seed, which models, the device kind, the code's version."""
    import bench

    return {
        "format": POOL_FORMAT,
        "bench": bench.__version__,
        "torch": torch.__version__,
        "target": f"{type(module).__module__}.{type(module).__qualname__}",
        "hparams": json.dumps(dict(getattr(module, "hparams", {})), sort_keys=True, default=repr),
        "recipe": [recipe.kind, recipe.epochs, recipe.batch_size, recipe.recipe, chunk.recipe, chunk.batching],
        "optimizer": [
            chunk.optimizer_class.__name__,
            json.dumps(chunk.optimizer_settings, sort_keys=True, default=repr),
        ],
        "callbacks": [_callback_identity(factory()) for factory in chunk.callback_factories],
        "augmentation": None if augmentation is None else repr(augmentation),
        "data": data,
        "seed": seed,
        "models": [models.start, models.stop],
        "device": chunk.device.type,
    }


def _callback_identity(callback) -> str:
    """A training callback of the recipe as its class and plain settings (its repr may hold an address)."""
    settings = {k: v for k, v in vars(callback).items() if isinstance(v, (bool, int, float, str, type(None)))}
    return f"{type(callback).__module__}.{type(callback).__qualname__}{json.dumps(settings, sort_keys=True)}"


class ShadowCache:
    """A folder of trained shadow models, one file per chunk of a pool: ``<SHA-256 of its key>.pt``.

    A file is used only when the key stored in it equals the key asked for, in full, and it loads as plain tensors
    (``torch.load(weights_only=True)``) of the right shapes; otherwise the chunk is trained again, with one line
    saying why, and the file replaced.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: dict[str, Any]) -> Path:
        text = json.dumps(key, sort_keys=True)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()}.pt"

    def load(self, key: dict[str, Any], chunk: ShadowModels, members: Tensor) -> Optional[Tensor]:
        """The chunk's trained state from the cache (its models set in place) and the samples they trained on; None:
        not cached, or not usable (then one line says why)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location=chunk.device, weights_only=True)
            if not isinstance(stored, dict) or stored.get("key") != json.dumps(key, sort_keys=True):
                raise ValueError("its key is not this pool's")
            trained = stored["trained"]
            if (
                not isinstance(trained, Tensor)
                or trained.shape != members.shape
                or (trained & ~members.to(trained.device)).any()
            ):
                raise ValueError("its models trained on other samples")
            chunk.load_trained_state(stored["state"])
        except Exception as error:  # a file is never trusted: any problem means train again
            reason = f"{type(error).__name__}: {str(error).splitlines()[0]}" if str(error) else type(error).__name__
            print(
                f"bench: shadow cache {path} not used ({reason}); training those shadow models again",
                file=sys.stderr,
                flush=True,
            )
            return None
        return trained.cpu()

    def save(self, key: dict[str, Any], chunk: ShadowModels, trained: Tensor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        partial = path.with_suffix(".partial")
        torch.save(
            {"key": json.dumps(key, sort_keys=True), "trained": trained.cpu(), "state": chunk.trained_state()}, partial
        )
        partial.replace(path)  # never a half-written entry under the key's name


_CURRENT_POOL: ContextVar[Optional[ShadowPool]] = ContextVar("bench_shadow_pool", default=None)


@contextlib.contextmanager
def sharing_shadows(pool: ShadowPool):
    """Within the block, every membership attack draws its shadows from ``pool`` (the harness: one per evaluation)."""
    token = _CURRENT_POOL.set(pool)
    try:
        yield pool
    finally:
        _CURRENT_POOL.reset(token)


def current_shadow_pool() -> Optional[ShadowPool]:
    """The pool the attacks share now (None outside :func:`sharing_shadows`: each attack trains its own)."""
    return _CURRENT_POOL.get()
