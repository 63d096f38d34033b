import gzip

import numpy as np
import pytest

from elt.data import load_data
from elt.data.fmnist import read_idx


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fmnist_reader_on_idx_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    d = load_data("fmnist", "test", data_dir=str(tmp_path))
    assert d.images.shape == (5, 28, 28, 1) and np.array_equal(d.images[..., 0], imgs)
    assert d.labels.tolist() == [0, 1, 2, 3, 4] and d.num_classes == 10


def test_fmnist_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_data("fmnist", "train", data_dir=str(tmp_path))
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(bad)


def test_digits_split():
    tr, te = load_data("digits", "train"), load_data("digits", "test")
    assert tr.images.shape[1:] == (8, 8, 1) and len(tr) + len(te) == 1797 and len(te) == 297
    assert tr.images.max() == 255 and tr.images.dtype == np.uint8
    from sklearn.datasets import load_digits  # elt reads its file directly: the same arrays

    d = load_digits()
    images = np.concatenate([tr.images, te.images])[..., 0]
    np.testing.assert_array_equal(images, np.round(d.images * (255.0 / 16.0)).astype(np.uint8))
    np.testing.assert_array_equal(np.concatenate([tr.labels, te.labels]), d.target)


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), color).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not an image")
    d = load_data("folder", "train", data_dir=str(tmp_path), image_size=16)
    assert d.images.shape == (6, 16, 16, 3) and d.class_names == ["cat", "dog"]
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert tuple(d.images[4, 8, 8]) == (0, 0, 255)
    with pytest.raises(ValueError, match="broken.jpg"):
        load_data("folder", "train", data_dir=str(tmp_path), image_size=16, strict_images=True)
    with pytest.raises(FileNotFoundError):
        load_data("folder", "train", data_dir=str(tmp_path / "missing"), image_size=16)
