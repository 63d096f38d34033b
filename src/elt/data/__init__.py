"""Data sets as in-memory arrays: images uint8 (N, H, W, C) and labels int64 (N,).

- `fmnist`: Fashion-MNIST from the idx files of Debian's `dataset-fashion-mnist` (the default);
- `digits`: scikit-learn's 8×8 digits (values 0..16 scaled to 0..255), for fast tests;
- `folder`: a class-per-folder image tree (ImageNet layout) for users' own images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .digits import load_digits_split
from .fmnist import FMNIST_CLASSES, load_fmnist
from .folder import load_image_folder


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)


DATASETS = ("fmnist", "digits", "folder")


def load_data(dataset: str, split: str, data_dir: str | None = None, image_size: int | None = None,
              strict_images: bool = False) -> ImageData:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "fmnist":
        images, labels = load_fmnist(split, data_dir)
        return ImageData(images, labels, list(FMNIST_CLASSES))
    if dataset == "digits":
        images, labels = load_digits_split(split)
        return ImageData(images, labels, [str(i) for i in range(10)])
    if dataset == "folder":
        images, labels, names = load_image_folder(data_dir, split, image_size, strict_images)
        return ImageData(images, labels, names)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
