"""Data sets as in-memory arrays: images uint8 (N, H, W, C) or clips uint8 (N, T, H, W, C), and
labels int64 (N,).

- `fmnist`: Fashion-MNIST from the idx files of Debian's `dataset-fashion-mnist` (the default);
- `digits`: scikit-learn's 8×8 digits (values 0..16 scaled to 0..255), for fast tests;
- `folder`: a class-per-folder image tree (ImageNet layout) for users' own images;
- `mfmnist`: moving Fashion-MNIST clips made from the Debian package's images (the video default);
- `ucf101`: UCF-101 videos from the standard release, decoded with PyAV.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..choices import DATASETS, SPLITS
from .digits import load_digits_split
from .fmnist import FMNIST_CLASSES, load_fmnist, upscale
from .folder import load_image_folder
from .moving import load_moving_fmnist
from .ucf101 import load_ucf101


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, H, W, C), or clips (N, T, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    aux_labels: np.ndarray | None = None  # moving-fmnist: the label not chosen (motion or class)
    fingerprint: str | None = None        # cheap identity for caches (else the arrays are hashed)

    @property
    def is_video(self) -> bool:
        return self.images.ndim == 5

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)




def load_data(dataset: str, split: str, data_dir: str | None = None, image_size: int | None = None,
              strict_images: bool = False, frames: int = 16, label: str = "class", clips: int | None = None,
              fold: int = 1, speed: tuple[float, float] = (1.0, 2.0), start_grid: int = 1) -> ImageData:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset == "fmnist":
        images, labels = load_fmnist(split, data_dir)
        if image_size not in (None, images.shape[1]):
            images = upscale(images, image_size)
        return ImageData(images, labels, list(FMNIST_CLASSES))
    if dataset == "digits":
        images, labels = load_digits_split(split)
        return ImageData(images, labels, [str(i) for i in range(10)])
    if dataset == "folder":
        images, labels, names = load_image_folder(data_dir, split, image_size, strict_images)
        return ImageData(images, labels, names)
    if dataset == "mfmnist":
        video, labels, aux, names, fingerprint = load_moving_fmnist(split, data_dir, frames, image_size or 64,
                                                                     clips if split == "train" else None, label, speed,
                                                                     start_grid)
        return ImageData(video, labels, names, aux, fingerprint)
    if dataset == "ucf101":
        video, labels, names = load_ucf101(data_dir, split, frames, image_size, fold,
                                           clips if split == "train" else None, strict_images)
        return ImageData(video, labels, names)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
