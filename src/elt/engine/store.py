"""Tensors and arrays on disk: safetensors weights and numpy arrays, written through the atomic writer
(a crash never leaves a partial file), and loaded with one clear error naming the file and the fix."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..utils.atomic import atomic_path


def load_weights(module: torch.nn.Module, path: Path, what: str,
                 fix: str = "it is a cache entry: delete it and elt builds it again", layout=None, mismatch: str | None = None) -> None:
    """Load a safetensors file into `module`; `layout(state)` may first re-shard it (FSDP2). An unreadable
    file gets `fix`; a readable one whose tensors do not fit the module gets `mismatch` (default `fix`)."""
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{what} file {path} is unreadable ({e}); {fix}") from None
    try:
        module.load_state_dict(layout(state) if layout is not None else state)
    except RuntimeError as e:
        raise ValueError(f"{what} file {path} does not match its config ({str(e).splitlines()[0]}); "
                         f"{mismatch or fix}") from None


def save_tensors(tensors: dict, path: Path) -> None:
    """safetensors, written to a temporary file and renamed: a crash never leaves a partial file."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def save_arrays(path: Path, array: np.ndarray | None = None, **arrays) -> None:
    """One array as .npy, or named arrays as .npz, written to a temporary file and renamed."""
    with atomic_path(path) as tmp:
        np.save(tmp, array) if array is not None else np.savez(tmp, **arrays)


def hash_weights(module: torch.nn.Module, h=None):
    """`h` (a new SHA-1 when None) updated with every tensor of the module's state, by name."""
    h = hashlib.sha1() if h is None else h
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h


def save_weights(module: torch.nn.Module, path: Path) -> None:
    save_tensors(module.state_dict(), path)
