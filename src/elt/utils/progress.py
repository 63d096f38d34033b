"""Progress bars: shown only when asked for and when stderr is a terminal, so logs written to a file
or a pipe carry no carriage returns or other control codes."""
from __future__ import annotations

from tqdm.auto import tqdm


def bar(iterable=None, *, progress: bool = True, **kwargs) -> tqdm:
    """tqdm over `iterable` (or a manual bar with total=...); off unless `progress` and a terminal."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=None if progress else True, **kwargs)
