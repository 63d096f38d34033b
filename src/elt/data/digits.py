"""scikit-learn's 8×8 digits (1797 images), split deterministically: last 297 images are the test split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

TEST_SIZE = 297


def digits_source() -> Path:
    """The file scikit-learn reads the digits from (its contents identify the data)."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    sl = slice(None, -TEST_SIZE) if split == "train" else slice(-TEST_SIZE, None)
    return images[sl], labels[sl]
