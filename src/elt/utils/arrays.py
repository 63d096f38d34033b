"""Conversions between uint8 image/clip arrays and float tensors, and batched application."""
from __future__ import annotations

import numpy as np
import torch

from .progress import bar


def as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A numpy array as a tensor without a copy (one copy if the array is read-only, e.g. a file buffer)."""
    if isinstance(images, torch.Tensor):
        return images
    return torch.from_numpy(images if images.flags.writeable else np.array(images, copy=True))

def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, C) → float (N, C, H, W) in [0, 1]; clips (N, T, H, W, C) → (N, C, T, H, W)."""
    return as_tensor(images).movedim(-1, 1).float().div_(255.0)

def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [0, 1] → uint8 (B, H, W, C); clips (B, C, T, H, W) → (B, T, H, W, C)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).cpu().numpy()


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int = 1024, progress: bool = False, desc: str = "") -> torch.Tensor:
    """fn applied to x in chunks of `batch_size`, written into one output allocated after the first chunk.
    (Keeping every chunk's small result alive between the large temporaries of the next ones fragments
    glibc's heap: encoding 60k clips grew the process by ~26 MB a chunk, to an out-of-memory kill.)"""
    out = None
    for i in bar(range(0, len(x), batch_size), desc=desc, progress=progress, leave=False):
        y = fn(x[i: i + batch_size])
        if out is None:
            out = torch.empty((len(x), *y.shape[1:]), dtype=y.dtype, device=y.device)
        out[i: i + len(y)] = y
    return out if out is not None else torch.empty(0)
