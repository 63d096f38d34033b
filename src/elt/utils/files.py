"""Local weight files given by the user: existence and SHA-256 checks with one clear error line."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256, read once per (file, size, modification time) in a process: checking a
    weights file and keying a cache by it do not read a large file twice."""
    st = os.stat(path)
    return _sha256(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | Path | None, sha256: str | None, what: str, where: str,
                sha256_prefix: str | None = None) -> Path:
    """The path of an existing file whose SHA-256 is `sha256` (not checked when None) or starts with
    `sha256_prefix` (torch.hub's file-name convention); `where` tells the user how to get the file."""
    if not path:
        raise ValueError(f"{what}: no file given; {where}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} not found; {where}")
    if sha256 or sha256_prefix:
        got, want = sha256_of(p), (sha256 or sha256_prefix).lower()
        if (got != want) if sha256 else not got.startswith(want):
            raise ValueError(f"{what} file {p} has SHA-256 {got}, expected {want}{'' if sha256 else '…'}: it is "
                             f"not the right file or is damaged; {where}")
    return p


def with_ext(base: str | Path, ext: str) -> Path:
    """BASE + ext (".npz"), whatever dots BASE's name holds (Path.with_suffix would replace "L1.5"'s ".5")."""
    base = Path(base)
    return base.parent / f"{base.name}{ext}"


PROBE = ".elt-write-test-"  # check_writable's short-lived file


def entries(folder: str | Path) -> list[Path]:
    """What `folder` holds, less check_writable's probes: another rank (or elt process) checking the same
    folder leaves one there for a moment, which must not make the folder look used."""
    return [p for p in Path(folder).iterdir() if not p.name.startswith(PROBE)]


def check_writable(folder: str | Path, what: str = "output folder", fix: str = "choose a writable one") -> Path:
    """`folder` exists and a file can be created in it (checked by creating and removing one), before any work;
    `fix` ends the message when it cannot."""
    folder = Path(folder) if str(folder) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file, not a folder; choose a folder")
    if not folder.is_dir():
        raise ValueError(f"{what} {folder} does not exist; create it or choose another")
    probe = folder / f"{PROBE}{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to {what} {folder} ({e.strerror}); {fix}") from None
    return folder


def refuse_existing(paths, overwrite: bool) -> None:
    """One clear error when an output would replace an existing file (or fill a non-empty folder), unless
    `overwrite` (the command's --overwrite) says so."""
    if overwrite:
        return
    for p in map(Path, paths):
        if p.is_file() or (p.is_dir() and entries(p)):
            raise ValueError(f"{p} exists; choose another output name, or pass --overwrite to replace it")
