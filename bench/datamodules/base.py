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
compare with the papers) and the other four pools partition the official training split.
Otherwise all five partition the single source.

Images are served as float tensors in [0, 1] with shape (C, H, W); normalisation is *not*
applied here. Networks normalise with ``spec.mean`` / ``spec.std`` as their first layer, so
that every attack reconstructs, and every metric compares, images in the same [0, 1] space.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from bench.errors import BenchError, class_path

POOLS = ("train", "val", "test", "nonmember", "attacker")


@dataclass(frozen=True)
class DataSpec:
    """What a network needs to know about a dataset to adapt to it."""

    name: str
    image_shape: tuple[int, int, int]  # (channels, height, width)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def coerce(cls, value: "DataSpec | Mapping[str, Any]") -> "DataSpec":
        """Accept a DataSpec or its dict form (as stored in checkpoints' hyper-parameters)."""
        if isinstance(value, DataSpec):
            return value
        fields = dict(value)
        return cls(
            name=str(fields["name"]),
            image_shape=tuple(int(v) for v in fields["image_shape"]),  # type: ignore[arg-type]
            num_classes=int(fields["num_classes"]),
            mean=tuple(float(v) for v in fields["mean"]),
            std=tuple(float(v) for v in fields["std"]),
        )

    def as_dict(self) -> dict[str, Any]:
        spec = asdict(self)
        spec["image_shape"] = list(self.image_shape)
        spec["mean"], spec["std"] = list(self.mean), list(self.std)
        return spec


class ImagePool(Dataset):
    """An in-memory pool of uint8 images served as float [0, 1] tensors.

    ``__getitems__`` makes the DataLoader fetch a whole batch with one indexing operation
    (paired with :func:`collate_batch`), which keeps data loading off the profile.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform=None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ImagePool expects uint8 images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
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
        raise BenchError(f"pool fractions must sum to at most 1, got {dict(fractions)} (sum {sum(fractions.values()):.3f})")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    pools, start = {}, 0
    for name, fraction in fractions.items():
        size = math.floor(fraction * total + 1e-9)
        pools[name] = order[start : start + size].sort().values
        start += size
    return pools


class PrivacyDataModule(L.LightningDataModule):
    """Base class of every DataModule of the suite.

    Subclasses set ``name``, ``image_shape`` and ``num_classes`` (and usually ``mean``/``std``)
    and implement :meth:`load_sources`.

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
    """

    abstract: bool = True  # set in a class body: the registry lists only concrete DataModules
    name: str = "dataset"
    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    mean: Optional[tuple[float, ...]] = None  # None: measured on the training pool
    std: Optional[tuple[float, ...]] = None
    #: fractions used when the source has an official test split (test = that split)
    default_fractions_with_test = {"train": 0.5, "val": 0.1, "nonmember": 0.2, "attacker": 0.2}
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
    ) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise BenchError(f"batch sizes must be at least 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        if num_workers < 0:
            raise BenchError(f"num_workers must be 0 (load in the main process) or more, got {num_workers}")
        if pool_limit is not None and pool_limit < 1:
            raise BenchError(f"pool_limit must be a positive number of samples, got {pool_limit}")
        if fractions is not None:
            unknown = set(fractions) - set(POOLS)
            if unknown:
                raise BenchError(f"unknown pool(s) {sorted(unknown)} in fractions; pools are {list(POOLS)}")
        self.save_hyperparameters()
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
        """Return ``{"train": (images, labels)}`` plus ``"test"`` when there is an official split.

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
        if "test" in sources:
            fractions = dict(self.fractions or self.default_fractions_with_test)
            fractions.pop("test", None)
            parts = {"test": (sources["test"], torch.arange(sources["test"][0].shape[0]))}
        else:
            fractions = dict(self.fractions or self.default_fractions_single)
            parts = {}
        train_images, train_labels = sources["train"]
        for name, index in split_indices(train_images.shape[0], fractions, self.seed).items():
            parts[name] = ((train_images, train_labels), index)
        missing = [pool for pool in POOLS if pool not in parts or parts[pool][1].numel() == 0]
        if missing:
            raise BenchError(f"{self.name}: pool(s) {missing} would be empty; give them a positive share in `fractions`")
        limiter = torch.Generator().manual_seed(self.seed + 1)
        for name, ((images, labels), index) in parts.items():
            if self.pool_limit is not None and len(index) > self.pool_limit:
                # a random subset: the lowest indices of a class-sorted source would skew the pool
                index = index[torch.randperm(len(index), generator=limiter)[: self.pool_limit]].sort().values
            transform = self.train_transform() if (name == "train" and self.augment) else None
            self._pools[name] = ImagePool(images[index], labels[index], transform)

    def _check_shapes(self, sources: dict[str, tuple[Tensor, Tensor]]) -> None:
        for split, (images, labels) in sources.items():
            if tuple(images.shape[1:]) != tuple(self.image_shape):
                raise BenchError(
                    f"{self.name}: the {split} images have shape {tuple(images.shape[1:])}, expected {self.image_shape} (C, H, W)"
                )
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise BenchError(f"{self.name}: labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")

    # ----------------------------------------------------------------- pools
    def pool(self, name: str) -> ImagePool:
        """One of the five pools (``setup`` is run on first use)."""
        if name not in POOLS:
            raise BenchError(f"unknown pool '{name}'; pools are {list(POOLS)}")
        self.setup()
        return self._pools[name]

    def pool_sizes(self) -> dict[str, int]:
        return {name: len(self.pool(name)) for name in POOLS}

    def pool_dataloader(self, name: str, shuffle: bool = False, batch_size: Optional[int] = None) -> DataLoader:
        from bench.datamodules.sampling import SeededShuffle

        pool = self.pool(name)
        # an epoch's order from (run seed, epoch) alone: a resumed run sees the straight run's batches
        sampler = SeededShuffle(len(pool)) if shuffle else None
        return DataLoader(
            pool,
            batch_size=batch_size or (self.batch_size if name == "train" else self.eval_batch_size),
            sampler=sampler,
            generator=sampler.generator if sampler is not None else None,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # the pools' batches are flat (images, labels) tuples: skip Lightning's generic collection walk when
        # they already are where they need to be (CPU training), which is measurable on small steps
        if isinstance(batch, (tuple, list)) and all(isinstance(t, Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        return self.pool_dataloader("train", shuffle=True)

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
        return DataSpec(self.name, tuple(self.image_shape), self.num_classes, tuple(mean), tuple(std))

    def _normalization_from_train_pool(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._measured_normalization is None:
            images, _ = self.pool("train").tensors()
            mean = images.mean(dim=(0, 2, 3))
            std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
            self._measured_normalization = (tuple(mean.tolist()), tuple(std.tolist()))
        return self._measured_normalization

    def describe(self) -> dict[str, Any]:
        """The dataset part of a result record."""
        return {"name": self.name, "class": class_path(self), "seed": self.seed,
                "pool_sizes": self.pool_sizes(), "spec": self.spec.as_dict()}
