"""Local weight files given by the user: existence and SHA-256 checks with one clear error line."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | Path | None, sha256: str | None, what: str, where: str) -> Path:
    """The path of an existing file whose SHA-256 is `sha256` (not checked when None); `where` tells
    the user how to get the file."""
    if not path:
        raise ValueError(f"{what}: no file given; {where}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} not found; {where}")
    if sha256:
        got = sha256_of(p)
        if got.lower() != sha256.lower():
            raise ValueError(f"{what} file {p} has SHA-256 {got}, expected {sha256}: it is not the right file or "
                             f"is damaged; {where}")
    return p
