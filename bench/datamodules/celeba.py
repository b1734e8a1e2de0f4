"""CelebA's 40 face attributes through torchvision (a multi-label task): the aligned-and-cropped images.

Xiang et al. (ICLR 2020, section 4.2) crop every face to its bounding box and estimate 40 binary
attributes with AlexNet. torchvision serves the official aligned-and-cropped faces (img_align_celeba,
178x218): CelebA's bounding boxes (list_bbox_celeba.txt) are given in the coordinates of the
in-the-wild images, which torchvision does not serve, so the aligned crops stand in for the paper's
box crops. They are resized to ``image_size`` (224: AlexNet's input; the paper does not give its own).
Pools: test = the official test split, val = the official validation split, and train, nonmember and
attacker partition the official training split (60/20/20 %).

torchvision checks the MD5 sums of the five annotation files (not of the images) whenever it opens the
dataset, download or not; files that differ from the originals are reported as missing or corrupted. A copy
that is knowingly not the original (the tests' fake CelebA) is read through a subclass of
``torchvision.datasets.CelebA`` whose ``file_list`` gives None for the sums (torchvision's ``check_integrity``
then only checks that each file exists), set as ``dataset_class``.
"""

from __future__ import annotations

from torch import Tensor
from torchvision import datasets
from torchvision.transforms import v2

from bench.datamodules.base import PrivacyDataModule, decode_all
from bench.errors import BenchError

#: torchvision's split names for the pools drawn whole from an official split
SPLITS = {"train": "train", "val": "valid", "test": "test"}


class CelebA(PrivacyDataModule):
    """CelebA attributes (``target_type="attr"``), files in ``data_dir/celeba`` as torchvision lays them out.

    Args:
        image_size: side of the square images the aligned faces are resized to.
        (the rest as :class:`~bench.datamodules.base.PrivacyDataModule`; ``num_workers`` also decodes the JPEGs)
    """

    name = "celeba"
    task = "multilabel"
    num_classes = 40
    image_shape = (3, 224, 224)
    dataset_class = datasets.CelebA  # checks the annotation files' MD5 sums, as torchvision ships them

    def __init__(self, data_dir: str = "data", image_size: int = 224, **kwargs) -> None:
        if image_size < 8:
            raise BenchError(f"image_size must be at least 8 pixels, got {image_size}")
        super().__init__(data_dir=data_dir, **kwargs)
        self.image_shape = (3, image_size, image_size)

    def _dataset(self, split: str, download: bool = False):
        resize = v2.Compose([v2.PILToTensor(), v2.Resize(self.image_shape[1:], antialias=True)])
        return self.dataset_class(self.data_dir, split=split, target_type="attr", transform=resize, download=download)

    def download_sources(self) -> None:
        try:
            self._dataset("all", download=True)
        except Exception as error:  # Google Drive quota, no gdown, no network: all mean the same here
            raise BenchError(
                f"celeba: download into data_dir='{self.data_dir}' failed ({error}). torchvision fetches CelebA from "
                f"Google Drive with gdown (pip install gdown); or put img_align_celeba/ and the list_*.txt and "
                f"identity_CelebA.txt files from the CelebA page into {self.data_dir}/celeba yourself"
            ) from error

    def load_sources(self) -> dict[str, tuple[Tensor, Tensor]]:
        try:
            splits = {pool: self._dataset(split) for pool, split in SPLITS.items()}
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
            raise BenchError(
                f"celeba: no CelebA files (or files that fail torchvision's MD5 check) "
                f"in data_dir='{self.data_dir}'/celeba "
                f"and download is off. Turn download on (bench fit: --data.download true) or point data_dir at the "
                f"folder that holds celeba/ (bench fit: --data.data_dir, bench evaluate: --data_dir)"
            ) from error
        self.label_names = tuple(splits["train"].attr_names[: self.num_classes])
        return {pool: decode_all(dataset, self.num_workers) for pool, dataset in splits.items()}
