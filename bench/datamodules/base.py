"""The shared DataModule contract: one dataset, five disjoint pools, and a spec networks adapt to.

Pools (all disjoint, drawn deterministically from ``seed``):

========== =====================================================================================
train      the members: the only data the method is trained on
val        model selection during training
test       utility is measured here; feature-inversion and reconstruction attacks are scored here
nonmember  data from the same distribution the model never saw (membership-inference negatives)
attacker   the adversary's own data: decoders, shadow models and attack models are trained on it
========== =====================================================================================

When the source dataset has an official test split, the test pool is that split (so accuracies
compare with the papers) and the other four pools partition the official training split; when it
also has an official validation split (CelebA), the val pool is that split and the other three
partition the training split. Otherwise all five partition the single source.

Targets follow ``task`` (see :mod:`bench.spec`): one class index per image (``multiclass``), or a
0/1 vector of ``num_classes`` binary attributes per image (``multilabel``).

Images are served as float tensors in [0, 1] with shape (C, H, W); normalisation is *not*
applied here. Networks normalise with ``spec.mean`` / ``spec.std`` as their first layer, so
that every attack reconstructs, and every metric compares, images in the same [0, 1] space.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bench.errors import BenchError, class_path
from bench.spec import TASKS, DataSpec  # noqa: F401 (re-exported: they lived here before bench.spec)

POOLS = ("train", "val", "test", "nonmember", "attacker")


class ImagePool(Dataset):
    """An in-memory pool of uint8 images served as float [0, 1] tensors.

    ``__getitems__`` makes the DataLoader fetch a whole batch with one indexing operation
    (paired with :func:`collate_batch`), which keeps data loading off the profile.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform=None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"ImagePool expects uint8 images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim not in (1, 2) or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},) (classes) or ({images.shape[0]}, attributes), "
                f"got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].float().div_(255)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index].float().div_(255)
        if self.transform is not None:  # random augmentations draw their parameters per sample
            images = torch.stack([self.transform(image) for image in images])
        return images, self.labels[index]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole pool as (float images in [0, 1], labels), without augmentation."""
        return self.images.float().div_(255), self.labels


def decode_all(dataset: Dataset, num_workers: int = 0, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Every (uint8 image, target) of a file-backed dataset, stacked; decoded by ``num_workers`` processes.

    For datasets of image files (CelebA, CUB-200-2011) whose items are already resized to one shape. The
    images are written into one preallocated tensor: concatenating batches would need twice the memory
    (CelebA at 224x224 is about 30 GB).
    """
    if len(dataset) == 0:
        raise BenchError(f"{type(dataset).__name__} holds no images")
    images: Optional[Tensor] = None
    targets, start = [], 0
    for batch_images, batch_targets in DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False
    ):
        if images is None:
            images = torch.empty((len(dataset), *batch_images.shape[1:]), dtype=batch_images.dtype)
        images[start : start + len(batch_images)] = batch_images
        targets.append(torch.as_tensor(batch_targets))
        start += len(batch_images)
    return images, torch.cat(targets)


class _Positions(Dataset):
    """A pool's sample positions in place of its samples (see :meth:`PrivacyDataModule.train_dataloader`)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Tensor:
        return torch.tensor(index)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor]:
        return (torch.as_tensor(indices, dtype=torch.long),)


def collate_batch(batch):
    """Collate for :class:`ImagePool`: its ``__getitems__`` already returns a batch."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)


def split_indices(total: int, fractions: Mapping[str, float], seed: int) -> dict[str, Tensor]:
    """Partition ``range(total)`` into disjoint index sets with the given fractions.

    Deterministic in ``seed``; pool sizes are ``floor(fraction * total)`` so the pools never
    overlap and never exceed the source, whatever the fractions' rounding.
    """
    if any(f < 0 for f in fractions.values()):
        raise BenchError(f"pool fractions must be non-negative, got {dict(fractions)}")
    if sum(fractions.values()) > 1 + 1e-9:
        raise BenchError(
            f"pool fractions must sum to at most 1, got {dict(fractions)} (sum {sum(fractions.values()):.3f})"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    pools, start = {}, 0
    for name, fraction in fractions.items():
        size = math.floor(fraction * total + 1e-9)
        pools[name] = order[start : start + size].sort().values
        start += size
    return pools


class PrivacyDataModule(L.LightningDataModule):
    """Base class of every DataModule of the suite.

    Subclasses set ``name``, ``image_shape`` and ``num_classes`` (and usually ``mean``/``std``;
    ``task`` and ``label_names`` for attribute vectors) and implement :meth:`load_sources`.

    Args:
        data_dir: where the dataset files live (or are downloaded to).
        batch_size: training mini-batch size (per device under DDP).
        eval_batch_size: batch size for validation, test and attack queries (default: batch_size).
        num_workers: DataLoader worker processes.
        seed: draws the pools; the same seed always gives the same pools.
        fractions: pool name -> fraction of the source it is drawn from (see the module docstring).
        pool_limit: cap every pool at this many samples (tiny runs and CI).
        download: download missing files (needs network).
        augment: random crop/flip on the training pool (where the dataset defines augmentation).
        canaries: this many canary candidates, taken out of the ``nonmember`` pool (so disjoint from every other
            pool), each added to the training pool independently with probability 1/2 (seeded by ``seed``,
            recorded): :mod:`bench.datamodules.canaries`. 0: none.
        canary_kind: ``mislabelled`` (a wrong label drawn at random) or ``atypical`` (the candidates a
            nearest-class-mean reference model fitted on the attacker pool fits worst).
    """

    abstract: bool = True  # set in a class body: the registry lists only concrete DataModules
    name: str = "dataset"
    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    #: "multiclass" (one class per image) or "multilabel" (num_classes binary attributes per image)
    task: str = "multiclass"
    #: names of the classes or attributes (per-attribute utility in records); None: their indices
    label_names: Optional[Sequence[str]] = None
    mean: Optional[tuple[float, ...]] = None  # None: measured on the training pool
    std: Optional[tuple[float, ...]] = None
    #: fractions used when the source has an official test split (test = that split)
    default_fractions_with_test = {"train": 0.5, "val": 0.1, "nonmember": 0.2, "attacker": 0.2}
    #: fractions used when the source has official validation and test splits (val, test = those splits)
    default_fractions_with_val_test = {"train": 0.6, "nonmember": 0.2, "attacker": 0.2}
    #: fractions used when there is a single source
    default_fractions_single = {"train": 0.4, "val": 0.1, "test": 0.2, "nonmember": 0.15, "attacker": 0.15}

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
        fractions: Optional[dict[str, float]] = None,
        pool_limit: Optional[int] = None,
        download: bool = True,
        augment: bool = False,
        canaries: int = 0,
        canary_kind: str = "mislabelled",
    ) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise BenchError(
                f"batch sizes must be at least 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}"
            )
        if num_workers < 0:
            raise BenchError(f"num_workers must be 0 (load in the main process) or more, got {num_workers}")
        if pool_limit is not None and pool_limit < 1:
            raise BenchError(f"pool_limit must be a positive number of samples, got {pool_limit}")
        if fractions is not None:
            unknown = set(fractions) - set(POOLS)
            if unknown:
                raise BenchError(f"unknown pool(s) {sorted(unknown)} in fractions; pools are {list(POOLS)}")
        if canaries:
            from bench.datamodules.canaries import check_canary_request

            check_canary_request(canaries, canary_kind, canaries, self.task, lowest_fpr=None)
        self.save_hyperparameters()
        self.canaries = canaries
        self.canary_kind = canary_kind
        #: the drawn canaries (None: no canaries); the training pool's first ``natural_train_size`` samples are
        #: the natural members, the included canaries follow them
        self.canary_set = None
        self.natural_train_size: Optional[int] = None
        self._canary_images: Optional[Tensor] = None
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.fractions = fractions
        self.pool_limit = pool_limit
        self.download = download
        self.augment = augment
        self._pools: dict[str, ImagePool] = {}
        self._measured_normalization: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None

    # ----------------------------------------------------------------- to implement
    def load_sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Return ``{"train": (images, labels)}`` plus ``"test"`` (and ``"val"``) when there are official splits.

        Images are uint8 tensors of shape (N, C, H, W). Raise :class:`BenchError` naming
        ``data_dir`` and ``download`` when files are missing.
        """
        raise BenchError(f"{type(self).__name__} does not implement load_sources()")

    def download_sources(self) -> None:
        """Fetch the dataset files into ``data_dir`` (only called when ``download`` is on)."""

    def train_transform(self):
        """Per-sample augmentation for the training pool when ``augment`` is on (None: none)."""
        return None

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        if self.download:
            self.download_sources()

    def setup(self, stage: Optional[str] = None) -> None:
        if self._pools:
            return
        sources = self.load_sources()
        self._check_shapes(sources)
        if "val" in sources and "test" not in sources:
            raise BenchError(f"{self.name}: an official validation split needs an official test split too")
        if "test" in sources:
            official = [split for split in ("val", "test") if split in sources]
            defaults = self.default_fractions_with_val_test if "val" in sources else self.default_fractions_with_test
            fractions = dict(self.fractions or defaults)
            for split in official:
                fractions.pop(split, None)
            parts = {split: (sources[split], torch.arange(sources[split][0].shape[0])) for split in official}
        else:
            fractions = dict(self.fractions or self.default_fractions_single)
            parts = {}
        train_images, train_labels = sources["train"]
        for name, index in split_indices(train_images.shape[0], fractions, self.seed).items():
            parts[name] = ((train_images, train_labels), index)
        missing = [pool for pool in POOLS if pool not in parts or parts[pool][1].numel() == 0]
        if missing:
            raise BenchError(
                f"{self.name}: pool(s) {missing} would be empty; give them a positive share in `fractions`"
            )
        limiter = torch.Generator().manual_seed(self.seed + 1)
        for name, ((images, labels), index) in parts.items():
            if self.pool_limit is not None and len(index) > self.pool_limit:
                # a random subset: the lowest indices of a class-sorted source would skew the pool
                index = index[torch.randperm(len(index), generator=limiter)[: self.pool_limit]].sort().values
            transform = self.train_transform() if (name == "train" and self.augment) else None
            if len(index) == images.shape[0]:  # a whole official split (sorted indices: all of them): no copy
                self._pools[name] = ImagePool(images, labels, transform)
            else:
                self._pools[name] = ImagePool(images[index], labels[index], transform)
        self.natural_train_size = len(self._pools["train"])
        if self.canaries:
            self._add_canaries()

    def _add_canaries(self) -> None:
        """Take the canary candidates out of the non-member pool and add the included ones to the training pool."""
        from bench.datamodules.canaries import check_canary_request, draw_canaries, nearest_mean_atypicality

        nonmember = self._pools["nonmember"]
        for warning in check_canary_request(self.canaries, self.canary_kind, len(nonmember) - 1, self.task):
            rank_zero_warn(warning)
        atypicality = None
        if self.canary_kind == "atypical":
            atypicality = nearest_mean_atypicality(*self._pools["attacker"].tensors(), *nonmember.tensors())
        canaries = draw_canaries(
            nonmember.labels, self.canaries, self.canary_kind, self.num_classes, self.seed, atypicality
        )
        kept = torch.ones(len(nonmember), dtype=torch.bool)
        kept[canaries.indices] = False
        self._canary_images = nonmember.images[canaries.indices]
        self._pools["nonmember"] = ImagePool(nonmember.images[kept], nonmember.labels[kept], nonmember.transform)
        train = self._pools["train"]
        self._pools["train"] = ImagePool(
            torch.cat([train.images, self._canary_images[canaries.inclusion]]),
            torch.cat([train.labels, canaries.labels[canaries.inclusion]]),
            train.transform,
        )
        self.canary_set = canaries

    def canary_queries(self) -> Optional[tuple[Tensor, Tensor, Tensor]]:
        """(images, labels, inclusion) of every canary candidate (None: no canaries); attacks read only the first
        two, the inclusion is the ground truth their scores are measured against."""
        self.setup()
        if self.canary_set is None:
            return None
        return self._canary_images.float().div_(255), self.canary_set.labels.clone(), self.canary_set.inclusion.clone()

    def _check_shapes(self, sources: dict[str, tuple[Tensor, Tensor]]) -> None:
        for split, (images, labels) in sources.items():
            if tuple(images.shape[1:]) != tuple(self.image_shape):
                raise BenchError(
                    f"{self.name}: the {split} images have shape {tuple(images.shape[1:])}, "
                    f"expected {self.image_shape} (C, H, W)"
                )
            if self.task == "multilabel":
                if labels.ndim != 2 or labels.shape[1] != self.num_classes:
                    raise BenchError(
                        f"{self.name}: the {split} targets have shape {tuple(labels.shape)}, expected "
                        f"(N, {self.num_classes}) binary attributes"
                    )
                if labels.numel() and not ((labels == 0) | (labels == 1)).all():
                    raise BenchError(
                        f"{self.name}: attribute targets must be 0 or 1, got values in [{labels.min()}, {labels.max()}]"
                    )
            elif labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise BenchError(
                    f"{self.name}: labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]"
                )

    # ----------------------------------------------------------------- pools
    def pool(self, name: str) -> ImagePool:
        """One of the five pools (``setup`` is run on first use)."""
        if name not in POOLS:
            raise BenchError(f"unknown pool '{name}'; pools are {list(POOLS)}")
        self.setup()
        return self._pools[name]

    def pool_sizes(self) -> dict[str, int]:
        return {name: len(self.pool(name)) for name in POOLS}

    def pool_dataloader(
        self, name: str, shuffle: bool = False, batch_size: Optional[int] = None, positions_only: bool = False
    ) -> DataLoader:
        """The pool's batches; ``positions_only``: the same batches' sample positions alone, nothing loaded."""
        from bench.datamodules.sampling import SeededShuffle

        pool = self.pool(name)
        # an epoch's order from (run seed, epoch) alone: a resumed run sees the straight run's batches
        sampler = SeededShuffle(len(pool)) if shuffle else None
        workers = 0 if positions_only else self.num_workers
        return DataLoader(
            _Positions(len(pool)) if positions_only else pool,
            batch_size=batch_size or (self.batch_size if name == "train" else self.eval_batch_size),
            sampler=sampler,
            generator=sampler.generator if sampler is not None else None,
            num_workers=workers,
            collate_fn=collate_batch,
            persistent_workers=workers > 0,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # the pools' batches are flat (images, labels) tuples: skip Lightning's generic collection walk when
        # they already are where they need to be (CPU training), which is measurable on small steps
        if isinstance(batch, (tuple, list)) and all(isinstance(t, Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        # a method that draws its own training batches (DP-SGD's Poisson sampler) takes Lightning's batches only as
        # the clock of its steps: the same number of them, but nothing loaded or augmented only to be dropped
        module = self.trainer.lightning_module if self.trainer is not None else None
        return self.pool_dataloader("train", shuffle=True, positions_only=getattr(module, "draws_own_batches", False))

    def val_dataloader(self) -> DataLoader:
        return self.pool_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.pool_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.pool_dataloader("test")

    # ----------------------------------------------------------------- spec
    @property
    def spec(self) -> DataSpec:
        mean, std = self.mean, self.std
        if mean is None or std is None:
            mean, std = self._normalization_from_train_pool()
        return DataSpec(self.name, tuple(self.image_shape), self.num_classes, tuple(mean), tuple(std), self.task)

    def _normalization_from_train_pool(self, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._measured_normalization is None:
            # in chunks, from float64 sums: a float copy of a large pool (CelebA's ~100k 224x224 images) would
            # not fit in memory
            images = self.pool("train").images
            channels = images.shape[1]
            total, squares = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
            for start in range(0, images.shape[0], chunk):
                part = images[start : start + chunk].to(torch.float64).div_(255).transpose(0, 1).reshape(channels, -1)
                total += part.sum(dim=1)
                squares += part.square().sum(dim=1)
            count = images.numel() // channels
            mean = total / count
            variance = (squares - count * mean.square()) / max(count - 1, 1)  # unbiased, as Tensor.std
            std = variance.clamp_min(0).sqrt().clamp_min(1e-3)
            self._measured_normalization = (tuple(mean.tolist()), tuple(std.tolist()))
        return self._measured_normalization

    def describe(self) -> dict[str, Any]:
        """The dataset part of a result record."""
        return {
            "name": self.name,
            "class": class_path(self),
            "seed": self.seed,
            "pool_sizes": self.pool_sizes(),
            **({"canaries": self.canary_set.describe()} if self.canary_set is not None else {}),
            "spec": self.spec.as_dict(),
        }
