"""One writer per run folder: an advisory lock (`fcntl.flock`) on `RUN/.elt.lock`, taken by `elt train`,
`elt evaluate`, `elt schedules` and `elt demo` for as long as they write there.

A second writer gets one line naming the holder's pid and command. The operating system drops a flock
when its process ends, however it ends, so the lock of a killed process is reclaimed by the next
writer without any clean-up; the file itself (its last holder's pid) stays and is harmless. Under
torchrun only rank 0 locks (the other ranks write nothing in the folder).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".elt.lock"


class RunLock:
    def __init__(self, folder: str | Path, what: str = ""):
        self.folder, self.what = Path(folder), what or " ".join(Path(a).name for a in sys.argv[:2])
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"cannot write to run folder {self.folder} ({e.strerror}); choose a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise ValueError(f"run folder {self.folder} is in use by another elt process ({holder}); wait for it to "
                             f"finish, or stop it, then run this again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {self.what}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode(errors="replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


@contextmanager
def run_writer(folder: str | Path, what: str):
    """For the time of the block: `folder` checked writable (before any work) and locked by rank 0."""
    from ..utils.files import check_writable
    from .distributed import rank_world

    check_writable(folder, "run folder")
    if rank_world()[0] != 0:
        yield
        return
    with RunLock(folder, what):
        yield
