"""Data sets as in-memory arrays: images uint8 (N, H, W, C) or clips uint8 (N, T, H, W, C), and
labels int64 (N,).

- `fmnist`: Fashion-MNIST from the idx files of Debian's `dataset-fashion-mnist` (the default);
- `digits`: scikit-learn's 8×8 digits (values 0..16 scaled to 0..255), for fast tests;
- `folder`: a class-per-folder image tree (ImageNet layout) for users' own images;
- `mfmnist`: moving Fashion-MNIST clips made from the Debian package's images (the video default);
- `ucf101`: UCF-101 videos from the standard release, decoded with PyAV.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..choices import DATASETS, SPLITS
from ..utils.files import sha256_of
from .digits import digits_source, load_digits_split
from .fmnist import FMNIST_CLASSES, fmnist_sources, load_fmnist, upscale
from .folder import list_image_folder, load_image_folder
from .moving import VERSION as MOVING_VERSION
from .moving import load_moving_fmnist
from .ucf101 import load_ucf101, read_split


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, H, W, C), or clips (N, T, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    aux_labels: np.ndarray | None = None  # moving-fmnist: the label not chosen (motion or class)

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
        video, labels, aux, names = load_moving_fmnist(split, data_dir, frames, image_size or 64,
                                                        clips if split == "train" else None, label, speed, start_grid)
        return ImageData(video, labels, names, aux)
    if dataset == "ucf101":
        video, labels, names = load_ucf101(data_dir, split, frames, image_size, fold,
                                           clips if split == "train" else None, strict_images)
        return ImageData(video, labels, names)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")


def identity(dataset: str, split: str, data_dir: str | None = None, **settings) -> str:
    """A cheap identity of a split, without loading it: the data set, the split, the settings that change
    its examples (`settings`: the keyword arguments of `load_data` that apply) and a digest of its source
    files — their contents for the embedded data sets (a few small files), their names, sizes and
    modification times for folders of images or videos. Caches of what elt trains or computes from a
    split are keyed by it."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    h = hashlib.sha1(json.dumps([dataset, split, settings], sort_keys=True, default=str).encode())
    if dataset in ("fmnist", "mfmnist"):
        for path in fmnist_sources(split, data_dir):
            h.update(sha256_of(path).encode())
        if dataset == "mfmnist":
            h.update(f"moving v{MOVING_VERSION}".encode())
    elif dataset == "digits":
        h.update(sha256_of(digits_source()).encode())
    elif dataset == "folder":
        items, classes = list_image_folder(data_dir, split)
        h.update(json.dumps(classes).encode())
        for path, label in items:
            st = os.stat(path)
            h.update(f"{path.name} {label} {st.st_size} {st.st_mtime_ns}\n".encode())
    elif dataset == "ucf101":
        items, classes = read_split(data_dir, split, settings.get("fold", 1))
        h.update(json.dumps(classes).encode())
        root = Path(data_dir)
        for rel, label in items:
            st = os.stat(root / rel) if (root / rel).exists() else None
            h.update(f"{rel} {label} {st and st.st_size} {st and st.st_mtime_ns}\n".encode())
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    return f"{dataset}-{split}-{h.hexdigest()[:16]}"
