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


def export_adm_npz(images: np.ndarray, path: str | Path, labels: np.ndarray | None = None) -> Path:
    """uint8 images (N, H, W, 3) → an `.npz` the ADM evaluator (guided-diffusion's
    `evaluations/evaluator.py`) reads: `arr_0` the images, `arr_1` the class labels when given.
    Grayscale (C = 1) is repeated to RGB, as the evaluator's Inception expects 3 channels."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels, np.int64)}
    np.savez(path, **arrays)
    return path
