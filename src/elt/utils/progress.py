"""Progress bars: shown only when asked for and when stderr is a terminal, so logs written to a file
or a pipe carry no carriage returns or other control codes.

elt's bars live in one process each (torchrun ranks are separate programs, and only rank 0 draws), so
their lock is a thread lock: by default tqdm also makes a multiprocessing semaphore in every process,
which fails where /dev/shm is missing or read-only and leaks when a process is killed. The lock is elt's
bars' own (a subclass): tqdm bars of the program that imports elt keep tqdm's default."""
from __future__ import annotations

import threading

from tqdm.auto import tqdm


class Bar(tqdm):
    """tqdm with a thread lock of its own."""


Bar.set_lock(threading.RLock())


def bar(iterable=None, *, progress: bool = True, **kwargs) -> Bar:
    """tqdm over `iterable` (or a manual bar with total=...); off unless `progress` and a terminal."""
    kwargs.setdefault("dynamic_ncols", True)
    return Bar(iterable, disable=None if progress else True, **kwargs)
