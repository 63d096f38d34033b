"""scikit-learn's 8×8 digits (1797 images), split deterministically: last 297 images are the test split.

The images are read from the file scikit-learn ships them in (`sklearn/datasets/data/digits.csv.gz`: 64
pixel columns, 0…16, and the label), found without importing scikit-learn: its import (scipy, pandas)
takes seconds, reading the file a few milliseconds. `tests/test_data.py` checks the arrays equal
`sklearn.datasets.load_digits()`'s."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

TEST_SIZE = 297


def digits_source() -> Path:
    """The file scikit-learn reads the digits from (its contents identify the data)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the digits data set ships with scikit-learn, which is not installed; "
                                "pip install scikit-learn (make setup installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (scikit-learn's digits); reinstall scikit-learn")
    return path


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(digits_source(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    images = np.round(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = table[:, -1].astype(np.int64)
    sl = slice(None, -TEST_SIZE) if split == "train" else slice(-TEST_SIZE, None)
    return images[sl], labels[sl]
