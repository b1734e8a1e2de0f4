"""The shared data contract: five disjoint, deterministic pools served as float [0, 1] (C, H, W) images."""

from __future__ import annotations

import gzip
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bench.datamodules import (
    CIFAR10,
    MNIST,
    POOLS,
    DataSpec,
    Digits,
    ImagePool,
    LocalFolder,
    read_idx,
    split_indices,
)
from bench.datamodules.base import PrivacyDataModule, collate_batch
from bench.errors import BenchError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared/datasets/mnist"
SINGLE = PrivacyDataModule.default_fractions_single
WITH_TEST = PrivacyDataModule.default_fractions_with_test


# ----------------------------------------------------------------------------- helpers
def _indexed_images(n: int, offset: int = 0, size: int = 4) -> np.ndarray:
    """uint8 (n, size, size) images whose first two pixels spell their own index (offset + i) in base 256."""
    index = np.arange(offset, offset + n)
    assert index.max() < 256 * 256
    images = np.empty((n, size, size), dtype=np.uint8)
    images[...] = ((index * 37) % 251).astype(np.uint8)[:, None, None]  # some texture so the std is not 0
    images[:, 0, 0] = index // 256
    images[:, 0, 1] = index % 256
    return images


def _decode(images: torch.Tensor) -> list[int]:
    """Recover the indices spelt by :func:`_indexed_images` from served float images (N, 1, H, W)."""
    pixels = (images * 255).round().long()
    return (pixels[:, 0, 0, 0] * 256 + pixels[:, 0, 0, 1]).tolist()


def _indexed_folder(tmp_path: Path, n: int = 997, test_n: int | None = None, **kwargs) -> LocalFolder:
    np.save(tmp_path / "images.npy", _indexed_images(n))
    np.save(tmp_path / "labels.npy", (np.arange(n) % 10).astype(np.int64))
    files = {}
    if test_n is not None:
        np.save(tmp_path / "test_images.npy", _indexed_images(test_n, offset=n))
        np.save(tmp_path / "test_labels.npy", (np.arange(n, n + test_n) % 10).astype(np.int64))
        files = {"test_images": "test_images.npy", "test_labels": "test_labels.npy"}
    return LocalFolder(
        data_dir=str(tmp_path), images="images.npy", labels="labels.npy", name="indexed", **files, **kwargs
    )


def _served_indices(datamodule: PrivacyDataModule) -> dict[str, list[int]]:
    return {name: _decode(datamodule.pool(name).tensors()[0]) for name in POOLS}


def _write_idx(path: Path, array: np.ndarray) -> None:
    codes = {
        np.dtype(np.uint8): 0x08,
        np.dtype(np.int8): 0x09,
        np.dtype(">i2"): 0x0B,
        np.dtype(">i4"): 0x0C,
        np.dtype(">f4"): 0x0D,
        np.dtype(">f8"): 0x0E,
    }
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


# ----------------------------------------------------------------------------- split_indices
@pytest.mark.parametrize("total", [1, 10, 997, 1797, 10_000])
@pytest.mark.parametrize("fractions", [SINGLE, WITH_TEST, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 0.05, "b": 0.9}])
def test_split_indices_are_disjoint_with_floor_sizes(total, fractions):
    pools = split_indices(total, fractions, seed=3)
    assert set(pools) == set(fractions)
    for name, index in pools.items():
        assert index.dtype == torch.long
        assert len(index) == math.floor(fractions[name] * total + 1e-9)
        assert torch.equal(index, index.sort().values)
        assert len(index) == 0 or (index.min() >= 0 and index.max() < total)
        assert len(set(index.tolist())) == len(index)
    for a, b in itertools.combinations(pools.values(), 2):
        assert not set(a.tolist()) & set(b.tolist())
    covered = set().union(*(set(index.tolist()) for index in pools.values()))
    assert len(covered) == sum(math.floor(f * total + 1e-9) for f in fractions.values()) <= total


def test_split_indices_fractions_summing_to_one_cover_everything():
    pools = split_indices(1000, SINGLE, seed=0)
    assert sorted(torch.cat(list(pools.values())).tolist()) == list(range(1000))


def test_split_indices_are_deterministic_in_the_seed():
    first, again, other = (split_indices(500, SINGLE, seed) for seed in (7, 7, 8))
    for name in SINGLE:
        assert torch.equal(first[name], again[name])
    assert any(not torch.equal(first[name], other[name]) for name in SINGLE)


@pytest.mark.parametrize(
    "fractions", [{"train": 0.7, "val": 0.4}, {"train": 1.0, "val": 0.01}, {"train": -0.1, "val": 0.5}]
)
def test_split_indices_rejects_bad_fractions(fractions):
    with pytest.raises(BenchError, match="fractions"):
        split_indices(100, fractions, seed=0)


# ----------------------------------------------------------------------------- pools on served content
def test_single_source_pools_are_disjoint_on_served_content(tmp_path):
    n = 997
    datamodule = _indexed_folder(tmp_path, n=n, seed=5)
    served = _served_indices(datamodule)
    expected = split_indices(n, SINGLE, seed=5)
    for name in POOLS:
        assert served[name] == expected[name].tolist(), f"pool {name} serves other images than split_indices drew"
        assert len(served[name]) == math.floor(SINGLE[name] * n + 1e-9)
    for a, b in itertools.combinations(POOLS, 2):
        assert not set(served[a]) & set(served[b]), f"pools {a} and {b} share images"
    assert datamodule.pool_sizes() == {name: len(served[name]) for name in POOLS}
    assert sum(datamodule.pool_sizes().values()) <= n
    # labels travel with their images
    for name in POOLS:
        labels = datamodule.pool(name).tensors()[1]
        assert labels.tolist() == [i % 10 for i in served[name]]


def test_official_test_split_is_the_test_pool_and_the_rest_partition_train(tmp_path):
    n, test_n = 600, 150
    datamodule = _indexed_folder(tmp_path, n=n, test_n=test_n, seed=2)
    served = _served_indices(datamodule)
    assert served["test"] == list(range(n, n + test_n))
    expected = split_indices(n, WITH_TEST, seed=2)
    for name in WITH_TEST:
        assert served[name] == expected[name].tolist()
        assert all(i < n for i in served[name])
    for a, b in itertools.combinations(POOLS, 2):
        assert not set(served[a]) & set(served[b])


def test_served_content_through_getitem_and_dataloader_matches_the_pool(tmp_path):
    datamodule = _indexed_folder(tmp_path, n=300, batch_size=32, eval_batch_size=50)
    train = datamodule.pool("train")
    by_item = [_decode(train[i][0].unsqueeze(0))[0] for i in range(len(train))]
    assert by_item == _decode(train.tensors()[0])
    # a shuffled epoch yields every training image exactly once, in (B, C, H, W) batches
    seen = []
    for images, labels in datamodule.train_dataloader():
        assert images.ndim == 4 and images.shape[1:] == (1, 4, 4) and images.shape[0] <= 32
        assert labels.shape == (images.shape[0],)
        seen += _decode(images)
    assert sorted(seen) == sorted(by_item)
    sizes = [images.shape[0] for images, _ in datamodule.val_dataloader()]
    assert sum(sizes) == len(datamodule.pool("val")) and max(sizes) <= 50


def test_same_seed_same_pools_other_seed_other_pools(tmp_path):
    def served(seed):
        return _served_indices(_indexed_folder(tmp_path, n=400, seed=seed))

    first, again, other = served(11), served(11), served(12)
    assert first == again
    assert first != other
    assert set(first["train"]) != set(other["train"])


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_pool_limit_caps_every_pool(tmp_path, limit):
    n = 400
    full = _served_indices(_indexed_folder(tmp_path, n=n, seed=1))
    limited_dm = _indexed_folder(tmp_path, n=n, seed=1, pool_limit=limit)
    limited = _served_indices(limited_dm)
    for name in POOLS:
        assert len(limited[name]) == min(limit, len(full[name]))
        assert set(limited[name]) <= set(full[name]), f"the limited {name} pool holds images from outside its pool"
    for a, b in itertools.combinations(POOLS, 2):
        assert not set(limited[a]) & set(limited[b])


def test_pool_limit_caps_digits_pools():
    sizes = Digits(pool_limit=13).pool_sizes()
    assert sizes == {name: 13 for name in POOLS}


@pytest.mark.parametrize("bad_limit", [0, -3])
def test_pool_limit_must_be_positive(bad_limit):
    with pytest.raises(BenchError, match="pool_limit"):
        Digits(pool_limit=bad_limit)


# ----------------------------------------------------------------------------- configuration errors
def test_fractions_summing_over_one_raise():
    datamodule = Digits(fractions={"train": 0.5, "val": 0.2, "test": 0.2, "nonmember": 0.1, "attacker": 0.1})
    with pytest.raises(BenchError, match="sum to at most 1"):
        datamodule.setup()


def test_unknown_pool_names_raise():
    with pytest.raises(BenchError, match="unknown pool"):
        Digits(fractions={"train": 0.5, "validation": 0.1})
    with pytest.raises(BenchError, match="unknown pool"):
        Digits().pool("holdout")


def test_a_pool_without_a_share_is_an_error_not_an_empty_pool():
    datamodule = Digits(fractions={"train": 0.5, "val": 0.1, "test": 0.2, "nonmember": 0.2})
    with pytest.raises(BenchError, match="attacker"):
        datamodule.setup()


def test_image_pool_rejects_non_uint8_images():
    with pytest.raises(ValueError):
        ImagePool(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        ImagePool(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- Digits
@pytest.fixture(scope="module")
def digits():
    datamodule = Digits(batch_size=64, seed=0)
    datamodule.setup()
    return datamodule


def test_digits_spec_and_served_types(digits):
    spec = digits.spec
    assert isinstance(spec, DataSpec)
    assert spec.name == "digits" and spec.image_shape == (1, 8, 8) and spec.num_classes == 10
    assert len(spec.mean) == len(spec.std) == 1
    assert sum(digits.pool_sizes().values()) == sum(math.floor(f * 1797 + 1e-9) for f in SINGLE.values())
    for name in POOLS:
        images, labels = digits.pool(name).tensors()
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.shape[1:] == (1, 8, 8)
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert labels.min() >= 0 and labels.max() < 10
    train_images, _ = digits.pool("train").tensors()
    assert train_images.max() == 1.0 and train_images.min() == 0.0  # the full 0..16 range maps onto [0, 1]
    image, label = digits.pool("test")[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and label.dtype == torch.int64


def test_digits_dataloaders_yield_bchw_batches(digits):
    for loader, expected_batch in ((digits.train_dataloader(), 64), (digits.test_dataloader(), 64)):
        total = 0
        for images, labels in loader:
            assert images.ndim == 4 and images.shape[1:] == (1, 8, 8) and images.shape[0] <= expected_batch
            assert images.dtype == torch.float32 and labels.dtype == torch.int64
            assert labels.shape == (images.shape[0],)
            total += images.shape[0]
        assert total == len(loader.dataset)


def test_getitems_equals_stacked_getitem(digits):
    pool = digits.pool("val")
    indices = [5, 0, 17, 3, 3, len(pool) - 1]
    images, labels = pool.__getitems__(indices)
    singles = [pool[i] for i in indices]
    torch.testing.assert_close(images, torch.stack([image for image, _ in singles]), rtol=0, atol=0)
    assert torch.equal(labels, torch.stack([label for _, label in singles]))
    assert collate_batch((images, labels)) == (images, labels)


def test_getitems_equals_stacked_getitem_on_random_pool():
    generator = torch.Generator().manual_seed(0)
    pool = ImagePool(torch.randint(0, 256, (20, 3, 5, 6), dtype=torch.uint8, generator=generator), torch.arange(20) % 4)
    images, labels = pool.__getitems__(list(range(19, -1, -2)))
    assert torch.equal(images, torch.stack([pool[i][0] for i in range(19, -1, -2)]))
    assert torch.equal(labels, torch.tensor([i % 4 for i in range(19, -1, -2)]))
    loader = DataLoader(pool, batch_size=6, collate_fn=collate_batch)
    assert [tuple(images.shape) for images, _ in loader] == [(6, 3, 5, 6)] * 3 + [(2, 3, 5, 6)]


def test_measured_normalization_is_the_train_pool_statistics(tmp_path):
    datamodule = _indexed_folder(tmp_path, n=500, seed=4)
    assert datamodule.mean is None and datamodule.std is None
    source = _indexed_images(500).astype(np.float64) / 255
    train = source[split_indices(500, SINGLE, seed=4)["train"].numpy()]
    spec = datamodule.spec
    assert spec.mean == pytest.approx((train.mean(),), abs=1e-5)
    assert spec.std == pytest.approx((train.std(ddof=1),), rel=1e-4)
    # the statistics are the train pool's, not the whole source's
    whole = source.mean()
    assert abs(train.mean() - whole) > 1e-6 and spec.mean[0] != pytest.approx(whole, abs=1e-7)


def test_digits_measured_normalization_matches_train_pool(digits):
    images, _ = digits.pool("train").tensors()
    spec = digits.spec
    assert spec.mean[0] == pytest.approx(images.mean().item(), abs=1e-6)
    assert spec.std[0] == pytest.approx(images.std().item(), rel=1e-5)


def test_fixed_normalization_is_used_as_declared():
    spec = CIFAR10(data_dir="unused", download=False).spec  # declared statistics need no data
    assert spec.image_shape == (3, 32, 32) and spec.num_classes == 10
    assert spec.mean == CIFAR10.mean and spec.std == CIFAR10.std
    assert DataSpec.coerce(spec.as_dict()) == spec


# ----------------------------------------------------------------------------- torchvision sets
@pytest.mark.parametrize("datamodule_class", [MNIST, CIFAR10])
def test_torchvision_without_files_and_download_off_names_the_fix(tmp_path, datamodule_class):
    datamodule = datamodule_class(data_dir=str(tmp_path), download=False)
    datamodule.prepare_data()  # must not try the network with download off
    with pytest.raises(BenchError) as error:
        datamodule.setup()
    message = str(error.value)
    assert "data_dir" in message and "download" in message
    assert str(tmp_path) in message


# ----------------------------------------------------------------------------- IDX files and LocalFolder
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4),
        np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8),
        np.array([-70000, 0, 12, 2**31 - 1], dtype=">i4"),
        np.linspace(-1, 1, 12, dtype=">f4").reshape(2, 6),
        np.array([[-5, 7]], dtype=np.int8),
    ],
    ids=["uint8-3d", "uint8-1d", "int32", "float32", "int8"],
)
def test_read_idx_round_trips(tmp_path, suffix, array):
    path = tmp_path / f"data.idx{suffix}"
    _write_idx(path, array)
    loaded = read_idx(path)
    assert loaded.shape == array.shape
    assert loaded.dtype.kind == array.dtype.kind and loaded.dtype.itemsize == array.dtype.itemsize
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_raises_bench_error(tmp_path, suffix):
    array = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    raw = header + array.tobytes()[:-10]  # the header promises 10 bytes more than there are
    path = tmp_path / f"images{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    with pytest.raises(BenchError, match="truncated|corrupt"):
        read_idx(path)


def test_idx_with_trailing_bytes_or_bad_magic_raises(tmp_path):
    array = np.arange(16, dtype=np.uint8).reshape(4, 4)
    good = tmp_path / "good.idx"
    _write_idx(good, array)
    (tmp_path / "long.idx").write_bytes(good.read_bytes() + b"\x00\x00")
    with pytest.raises(BenchError, match="truncated|corrupt"):
        read_idx(tmp_path / "long.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02" + good.read_bytes()[2:])
    with pytest.raises(BenchError, match="not an IDX"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "empty.idx").write_bytes(b"")
    with pytest.raises(BenchError):
        read_idx(tmp_path / "empty.idx")


def test_truncated_gzip_stream_raises_bench_error(tmp_path):
    array = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    path = tmp_path / "full.gz"
    _write_idx(path, array)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(BenchError, match="cut.gz"):
        read_idx(cut)


def test_corrupt_gzip_stream_raises_bench_error(tmp_path):
    array = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    path = tmp_path / "images.gz"
    _write_idx(path, array)
    data = bytearray(path.read_bytes())
    data[10] |= 0b110  # first deflate block header: BTYPE=11, a reserved (invalid) block type
    path.write_bytes(bytes(data))
    with pytest.raises(BenchError):
        read_idx(path)


def test_local_folder_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(120, 9, 7), dtype=np.uint8)
    labels = (np.arange(120) % 6).astype(np.uint8)
    _write_idx(tmp_path / "imgs-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "labs-idx1-ubyte", labels)
    datamodule = LocalFolder(
        data_dir=str(tmp_path), images="imgs-idx3-ubyte.gz", labels="labs-idx1-ubyte", name="tiny", seed=0
    )
    assert datamodule.image_shape == (1, 9, 7) and datamodule.num_classes == 6
    assert datamodule.spec.image_shape == (1, 9, 7)
    train = datamodule.pool("train")
    index = split_indices(120, SINGLE, seed=0)["train"].numpy()
    served, served_labels = train.tensors()
    np.testing.assert_allclose(served[:, 0].numpy(), images[index] / 255, atol=1e-7)
    assert served_labels.tolist() == labels[index].tolist()


def test_local_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(BenchError, match="data_dir"):
        LocalFolder(data_dir=str(tmp_path), images="missing.npy", labels="missing-labels.npy")
    np.save(tmp_path / "images.npy", _indexed_images(10))
    np.save(tmp_path / "labels.npy", np.arange(9))
    with pytest.raises(BenchError, match="labels"):
        LocalFolder(data_dir=str(tmp_path), images="images.npy", labels="labels.npy")
    np.save(tmp_path / "float.npy", np.zeros((10, 4, 4), dtype=np.float32))
    np.save(tmp_path / "labels10.npy", np.arange(10))
    with pytest.raises(BenchError, match="uint8"):
        LocalFolder(data_dir=str(tmp_path), images="float.npy", labels="labels10.npy")
    with pytest.raises(BenchError, match="test_images"):
        LocalFolder(data_dir=str(tmp_path), images="images.npy", labels="labels10.npy", test_images="images.npy")


def test_local_folder_accepts_channels_last_arrays(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(50, 6, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", images)
    np.save(tmp_path / "labels.npy", np.arange(50) % 3)
    datamodule = LocalFolder(data_dir=str(tmp_path), images="rgb.npy", labels="labels.npy", name="rgb")
    assert datamodule.image_shape == (3, 6, 5) and datamodule.num_classes == 3
    served, _ = datamodule.pool("train").tensors()
    index = split_indices(50, SINGLE, seed=0)["train"].numpy()
    np.testing.assert_allclose(served.numpy(), images[index].transpose(0, 3, 1, 2) / 255, atol=1e-7)


@pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason=f"no MNIST test set at {MNIST_DIR}")
def test_real_mnist_test_set_loads():
    datamodule = LocalFolder(data_dir=str(MNIST_DIR))
    sources = datamodule.load_sources()
    images, labels = sources["train"]
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10_000,) and set(labels.tolist()) == set(range(10))
    spec = datamodule.spec
    # a local split is never named like the official dataset, whose table it must not join
    assert spec.image_shape == (1, 28, 28) and spec.num_classes == 10 and spec.name == "mnist_local"
    assert spec.mean[0] == pytest.approx(0.1307, abs=0.01)  # the familiar MNIST statistics
    sizes = datamodule.pool_sizes()
    assert all(size > 0 for size in sizes.values())
    assert sum(sizes.values()) <= 10_000
    test_images, _ = datamodule.pool("test").tensors()
    assert test_images.shape[1:] == (1, 28, 28) and 0.0 <= test_images.min() and test_images.max() <= 1.0


def test_pool_limit_draws_a_random_subset_not_the_first_samples(tmp_path):
    full = _served_indices(_indexed_folder(tmp_path, n=400, seed=1))
    limited = _served_indices(_indexed_folder(tmp_path, n=400, seed=1, pool_limit=20))
    for name in POOLS:
        assert sorted(limited[name]) != sorted(full[name])[:20], f"the {name} pool kept its lowest indices"
