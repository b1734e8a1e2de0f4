"""Data from a local folder: MNIST-format IDX files, or arrays saved with NumPy."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from bench.datamodules.base import PrivacyDataModule
from bench.errors import BenchError, regular_file

#: far more classes than any dataset here has: a label past it is a mistake (1 + the largest label sizes the classifier)
MAX_CLASSES = 100_000
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of the MNIST distribution."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise BenchError(f"cannot read IDX file {path}: truncated or corrupt ({error})") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise BenchError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise BenchError(
            f"{path} is truncated or corrupt: header promises {expected} bytes of data, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


class LocalFolder(PrivacyDataModule):
    """Images and labels from files in ``data_dir``: IDX (MNIST format, ``.gz`` or not) or ``.npy``.

    With only one pair of files (e.g. the 10,000-image MNIST test set), all five pools are
    split from it. Give ``test_images``/``test_labels`` to use an official test split.

    Args:
        images: file name (in ``data_dir``) of the images: (N, H, W) or (N, C, H, W) or (N, H, W, C) uint8.
        labels: file name of the labels: (N,) integers.
        test_images / test_labels: optional official test split.
        num_classes: number of classes (default: 1 + the largest label).
        name: dataset name in records and the leaderboard (default: ``<folder name>_local``, so that
            a local split never shares a table with the official dataset of the same name).
    """

    def __init__(
        self,
        data_dir: str = "data",
        images: str = "t10k-images-idx3-ubyte.gz",
        labels: str = "t10k-labels-idx1-ubyte.gz",
        test_images: Optional[str] = None,
        test_labels: Optional[str] = None,
        num_classes: Optional[int] = None,
        name: Optional[str] = None,
        download: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, download=download, **kwargs)
        self.files = {"train": (images, labels)}
        if (test_images is None) != (test_labels is None):
            raise BenchError("give both test_images and test_labels, or neither")
        if test_images is not None:
            self.files["test"] = (test_images, test_labels)
        self.name = name or f"{Path(data_dir).resolve().name}_local"
        self._sources: Optional[dict[str, tuple[Tensor, Tensor]]] = None
        sources = self._read()  # the shape and class count are the files' own: read them now
        first_images = sources["train"][0]
        self.image_shape = tuple(first_images.shape[1:])
        self.num_classes = num_classes or int(max(labels.max() for _, labels in sources.values())) + 1
        if self.num_classes > MAX_CLASSES:
            where = f"labels in {Path(data_dir) / labels}" if num_classes is None else "num_classes"
            derived = "(1 + the largest label) " if num_classes is None else ""
            raise BenchError(
                f"{where}: {self.num_classes} classes {derived}is more than {MAX_CLASSES:,}; "
                "number the classes 0..K-1 in the labels file"
            )

    def _read(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._sources is None:
            self._sources = {
                split: (_images_nchw(self._load(images)), _labels(self._load(labels), labels))
                for split, (images, labels) in self.files.items()
            }
            for split, (images, labels) in self._sources.items():
                if images.shape[0] != labels.shape[0]:
                    raise BenchError(
                        f"{self.files[split][0]} holds {images.shape[0]} images "
                        f"but {self.files[split][1]} holds {labels.shape[0]} labels"
                    )
                if images.shape[0] == 0:
                    empty = Path(self.data_dir) / self.files[split][0]
                    raise BenchError(f"{empty} holds no images; give a file with at least one")
        return self._sources

    def _load(self, file_name: str) -> np.ndarray:
        path = Path(self.data_dir) / file_name
        if not path.exists():
            raise BenchError(
                f"{path} not found: point data_dir at the folder holding '{file_name}' "
                "(this DataModule never downloads)"
            )
        regular_file(path, "data file")  # a FIFO or device would block the read or never end
        if path.suffix == ".npy":
            _check_npy_size(path)
            try:
                array = np.load(path, allow_pickle=False)  # never unpickle: a .npy of objects could run code
            except ValueError as error:
                if "allow_pickle" in str(error):
                    raise BenchError(
                        f"{path} holds Python objects, not numbers; save plain uint8 images and integer "
                        "labels (numpy.save of a numeric array)"
                    ) from None
                raise BenchError(
                    f"cannot read {path}: truncated or not a .npy file ({str(error).splitlines()[0][:160]})"
                ) from None
            except (OSError, EOFError) as error:
                raise BenchError(f"cannot read {path}: truncated or corrupt ({error})") from None
            if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
                raise BenchError(
                    f"{path} holds {getattr(array, 'dtype', type(array).__name__)} data; images must be uint8 "
                    "and labels integers"
                )
            return array
        return read_idx(path)

    def load_sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        return self._read()


def _check_npy_size(path: Path) -> None:
    """The data a .npy header promises is in the file: an absurd shape would otherwise allocate it before reading."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as handle:
            version = npy.read_magic(handle)
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        first_line = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise BenchError(f"cannot read {path}: truncated or not a .npy file ({first_line})") from None
    if dtype.hasobject:
        return  # np.load refuses it with its own message (allow_pickle=False)
    promised = int(np.prod(shape, dtype=object)) * dtype.itemsize
    found = path.stat().st_size - offset
    if promised != found:
        raise BenchError(
            f"{path} is truncated or corrupt: its header promises shape {shape} ({promised:,} bytes of "
            f"data), the file holds {found:,}; save it again with numpy.save"
        )


def _labels(array: np.ndarray, file_name: str) -> Tensor:
    if array.ndim != 1 or array.dtype.kind not in "iu" or (array.size and array.min() < 0):
        raise BenchError(
            f"labels in {file_name} must be a 1-D array of non-negative integers, got {array.dtype} "
            f"of shape {array.shape}"
        )
    return torch.from_numpy(array.astype(np.int64))


def _images_nchw(array: np.ndarray) -> Tensor:
    if array.dtype != np.uint8:
        raise BenchError(f"images must be uint8 (0..255), got {array.dtype}")
    images = torch.from_numpy(array.copy())
    if images.ndim == 3:
        return images.unsqueeze(1)
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        return images.permute(0, 3, 1, 2).contiguous()
    if images.ndim == 4:
        return images
    raise BenchError(f"images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C), got {tuple(images.shape)}")
