"""Fashion-MNIST from its original idx files (gzipped or not)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}; install Debian's "
        f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass --data-dir with the idx files")


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read idx file {path}: {e}; re-install or re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file (bad magic number); check the file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def fmnist_sources(split: str, data_dir: str | None = None) -> tuple[Path, Path]:
    """The split's image and label files (one clear error when one is missing)."""
    directory = Path(data_dir or DEFAULT_DIR)
    return tuple(_find(directory, stem) for stem in _FILES[split])


def load_fmnist(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = fmnist_sources(split, data_dir)
    images = read_idx(image_file)
    labels = read_idx(label_file).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} images ({len(images)}) and labels ({len(labels)}) differ in count")
    return images[..., None], labels


def upscale(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 28, 28, 1) → (N, size, size, 1), bicubic (PIL): the garments at a larger resolution,
    e.g. 64×64 for a GPU recipe whose tokenizer makes a 16×16 grid as ImageNet's."""
    from PIL import Image

    if size < 8:
        raise ValueError(f"data.image_size={size} is too small for Fashion-MNIST; use 28 (native) or more")
    out = np.empty((len(images), size, size, 1), np.uint8)
    for i, im in enumerate(images[..., 0]):
        out[i, ..., 0] = np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
    return out
