"""Atomic file writes: readers (other ranks, a resumed run, a second process) see the old file or the
whole new one, never a part; a crash leaves no partial file behind."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path beside `path` (same suffix, so np.save/np.savez keep the name) and
    renames it onto `path` when the block ends without an error; removes it otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    import json

    write_text(path, json.dumps(obj, indent=indent) + "\n")
