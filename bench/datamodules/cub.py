"""CUB-200-2011 (Wah et al., 2011): 200 bird species, every image cropped to its bounding box.

Xiang et al. (ICLR 2020, section 4.2): "All bird images in the CUB200-2011 datasets were cropped using
their bounding boxes for both training and testing", then VGG-16 (224x224 inputs: its encryption module
ends before the last 56x56 feature map). The archive is not in torchvision and is not downloaded:
get CUB_200_2011.tgz from the Caltech page (https://www.vision.caltech.edu/datasets/cub_200_2011/) and
extract it into ``data_dir`` (``data_dir/CUB_200_2011/images.txt`` ...). Pools: test = the official test
split (train_test_split.txt), the other four from its training split (as every official split).
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from bench.datamodules.base import PrivacyDataModule, decode_all
from bench.errors import BenchError

ARCHIVE_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")
SOURCE = "https://www.vision.caltech.edu/datasets/cub_200_2011/"


def crop_to_box(image: Tensor, box: tuple[float, float, float, float]) -> Tensor:
    """The pixels of ``image`` (C, H, W) inside ``box`` = (x, y, width, height), as bounding_boxes.txt gives it.

    CUB's boxes are in pixels, from the top-left corner, sometimes fractional: the crop keeps every pixel
    the box touches, clipped to the image.
    """
    x, y, width, height = box
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(image.shape[-1], math.ceil(x + width)), min(image.shape[-2], math.ceil(y + height))
    if right <= left or bottom <= top:
        raise BenchError(f"bounding box {box} lies outside the {image.shape[-1]}x{image.shape[-2]} image")
    return TF.crop(image, top, left, bottom - top, right - left)


def read_table(path: Path) -> dict[int, list[str]]:
    """One of the archive's ``<image_id> <values...>`` files, by image id."""
    rows = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            image_id, *values = line.split()
            if not values:
                raise BenchError(f"{path}, line {number}: expected '<image_id> <value> ...', got '{line}'")
            rows[int(image_id)] = values
    return rows


class BoxCrops(Dataset):
    """(image cropped to its box and resized, class index) for the given image ids of the archive at ``root``."""

    def __init__(
        self,
        root: Path,
        ids: list[int],
        paths: dict[int, str],
        boxes: dict[int, tuple[float, ...]],
        labels: dict[int, int],
        size: tuple[int, int],
    ) -> None:
        self.root, self.ids, self.paths, self.boxes, self.labels, self.size = root, ids, paths, boxes, labels, size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image_id = self.ids[index]
        image = decode_image(str(self.root / "images" / self.paths[image_id]), mode=ImageReadMode.RGB)  # a few are grey
        crop = crop_to_box(image, self.boxes[image_id])
        return TF.resize(crop, list(self.size), antialias=True), self.labels[image_id]


class CUB200(PrivacyDataModule):
    """CUB-200-2011 bird crops from the official archive in ``data_dir`` (or ``data_dir/CUB_200_2011``).

    Args:
        image_size: side of the square images every box crop is resized to (VGG-16: 224).
        (the rest as :class:`~bench.datamodules.base.PrivacyDataModule`; ``num_workers`` also decodes the JPEGs;
        ``download`` does nothing: the archive must be fetched by hand)
    """

    name = "cub200"
    num_classes = 200
    image_shape = (3, 224, 224)

    def __init__(self, data_dir: str = "data", image_size: int = 224, **kwargs) -> None:
        if image_size < 8:
            raise BenchError(f"image_size must be at least 8 pixels, got {image_size}")
        super().__init__(data_dir=data_dir, **kwargs)
        self.image_shape = (3, image_size, image_size)

    def archive_root(self) -> Path:
        for root in (Path(self.data_dir) / "CUB_200_2011", Path(self.data_dir)):
            if all((root / name).is_file() for name in ARCHIVE_FILES) and (root / "images").is_dir():
                return root
        raise BenchError(
            f"cub200: no CUB-200-2011 archive in data_dir='{self.data_dir}' "
            f"(need images/ and {', '.join(ARCHIVE_FILES)}). "
            f"It is not downloaded for you: get CUB_200_2011.tgz from {SOURCE}, extract it into that folder "
            f"(it creates CUB_200_2011/), or point data_dir there (bench fit: --data.data_dir)"
        )

    def load_sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        root = self.archive_root()
        paths = {i: values[0] for i, values in read_table(root / "images.txt").items()}
        labels = {i: int(values[0]) - 1 for i, values in read_table(root / "image_class_labels.txt").items()}  # 1-based
        training = {i: values[0] == "1" for i, values in read_table(root / "train_test_split.txt").items()}
        boxes = {
            i: tuple(float(v) for v in values[:4]) for i, values in read_table(root / "bounding_boxes.txt").items()
        }
        missing = [
            name for name, table in zip(ARCHIVE_FILES[1:], (labels, training, boxes)) if set(table) != set(paths)
        ]
        if missing:
            raise BenchError(
                f"cub200: {', '.join(missing)} in {root} do not list the same image ids as images.txt; "
                f"re-extract the archive from {SOURCE}"
            )
        sources = {}
        for split, is_training in (("train", True), ("test", False)):
            ids = sorted(i for i in paths if training[i] == is_training)
            images, targets = decode_all(
                BoxCrops(root, ids, paths, boxes, labels, self.image_shape[1:]), self.num_workers
            )
            sources[split] = (images, targets.long())
        return sources
