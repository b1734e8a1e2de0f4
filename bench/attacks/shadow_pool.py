"""One shadow pool per evaluation, shared by every membership attack that can use it, and its cache on disk.

The harness creates a :class:`ShadowPool` per evaluation and sizes it from every attack's ``shadow_need()`` before any
attack runs: one offline pool (shadows on random halves of the attacker pool: loss threshold, nasr_shadow, Shokri,
LiRA, RMIA) and one online IN/OUT pool (LiRA online, RMIA online). Each shadow's initial weights, data half and data
order are seeded from the evaluation seed, the pool kind and its index, so an attack that takes the first k models of
a pool gets exactly the models it would train alone. :class:`ShadowCache` keeps trained pools on disk under the
SHA-256 of everything that determines them; a file whose stored key differs, or that fails to load, is retrained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from bench.attacks.cache import KeyedCache, code_fingerprint, method_sources
from bench.attacks.shadow_models import ShadowModels, random_halves


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


#: the shadows' epochs and batch size where the target's are unknown (a model trained elsewhere, a module never fitted
#: by a Trainer) and the attack states none
FALLBACK_EPOCHS, FALLBACK_BATCH_SIZE = 30, 32


@dataclass(frozen=True)
class TargetTraining:
    """How the target trained, as far as the harness knows: its epochs and its global batch size (None: unknown).

    Shadow and reference models train like the target (Carlini et al. 2022; Shokri et al. 2017): a membership
    attack that states no ``shadow_epochs`` / ``batch_size`` takes these.
    """

    epochs: Optional[int] = None
    batch_size: Optional[int] = None

    @classmethod
    def of(cls, module, datamodule, epochs: Optional[int] = None) -> TargetTraining:
        """The target's training as its Trainer and DataModule tell it; ``epochs`` (e.g. from a checkpoint) wins."""
        trainer = getattr(module, "_trainer", None)
        if epochs is None and trainer is not None:
            epochs = int(trainer.current_epoch) or None  # epochs completed: early stopping included
        batch_size = getattr(datamodule, "batch_size", None)
        world_size = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        # the per-device batch times the devices: what one optimizer step averaged over under DDP
        return cls(epochs or None, batch_size * world_size if isinstance(batch_size, int) else None)


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
    resolved (and its callbacks), the data, the evaluation seed, which models, the device kind, the code's version
    and source (:func:`code_fingerprint`)."""
    import bench

    return {
        "format": POOL_FORMAT,
        "bench": bench.__version__,
        "code": code_fingerprint(*method_sources(module)),
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


class ShadowCache(KeyedCache):
    """A folder of trained shadow models, one file per chunk of a pool (:class:`~bench.attacks.cache.KeyedCache`).

    A file is used only when the key stored in it equals the key asked for, in full, it loads as plain tensors
    (``torch.load(weights_only=True)``) of the right shapes and its models trained on samples of this pool; otherwise
    the chunk is trained again, with one line saying why, and the file replaced.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, "shadow cache", "training those shadow models again")

    def load(self, key: dict[str, Any], chunk: ShadowModels, members: Tensor) -> Optional[Tensor]:
        """The chunk's trained state from the cache (its models set in place) and the samples they trained on; None:
        not cached, or not usable (then one line says why)."""
        stored = super().load(key, map_location=chunk.device)
        if stored is None:
            return None
        try:
            trained = stored["trained"]
            if (
                not isinstance(trained, Tensor)
                or trained.shape != members.shape
                or (trained & ~members.to(trained.device)).any()
            ):
                raise ValueError("its models trained on other samples")
            chunk.load_trained_state(stored["state"])
        except Exception as error:  # a file is never trusted: any problem means train again
            self.refuse(key, error)
            return None
        return trained.cpu()

    def save(self, key: dict[str, Any], chunk: ShadowModels, trained: Tensor) -> None:
        """Keep the chunk under its key; a cache that cannot be written costs the reuse, never the evaluation."""
        super().save(key, {"trained": trained.cpu(), "state": chunk.trained_state()})


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


_CURRENT_TARGET: ContextVar[Optional[TargetTraining]] = ContextVar("bench_target_training", default=None)


@contextlib.contextmanager
def training_like(target: TargetTraining):
    """Within the block, membership attacks that state no shadow epochs or batch size take ``target``'s (the harness:
    one per evaluation)."""
    token = _CURRENT_TARGET.set(target)
    try:
        yield target
    finally:
        _CURRENT_TARGET.reset(token)


def current_target_training() -> Optional[TargetTraining]:
    """The target's training the attacks copy now (None outside :func:`training_like`)."""
    return _CURRENT_TARGET.get()
