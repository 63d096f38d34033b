"""Atomic writes: a failed write leaves the old file whole and no temporary file behind."""
import numpy as np
import pytest

from elt.utils.atomic import atomic_path, write_text
from elt.engine.checkpoint import save_arrays


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_text(path, "new")
    assert path.read_text() == "new"


def test_arrays_keep_their_name(tmp_path):
    save_arrays(tmp_path / "a.npy", np.arange(3))
    save_arrays(tmp_path / "b.npz", x=np.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npz"]
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
