"""Samples in the layouts standard evaluators read."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def export_stylegan_v(clips: np.ndarray, folder: str | Path) -> Path:
    """uint8 clips (N, T, H, W, C) → FOLDER/VVVVVV/FFFFFF.png: one directory of frames per video, the
    layout StyleGAN-V's `calc_metrics_for_dataset.py --fake_data_path FOLDER` reads (frames in name
    order; grayscale saved as grayscale PNGs, which its loader converts to RGB)."""
    from PIL import Image

    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.dtype != np.uint8:
        raise ValueError(f"expected uint8 clips (N, T, H, W, C), got {clips.dtype} {clips.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for v, clip in enumerate(clips):
        d = folder / f"{v:06d}"
        d.mkdir(exist_ok=True)
        for t, frame in enumerate(clip):
            Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(d / f"{t:06d}.png")
    return folder
