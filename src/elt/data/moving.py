"""Moving Fashion-MNIST: deterministic clips in which one 28×28 garment (never resized) glides across a
black canvas: 9 frames of 40×40 for the CPU demo, 16 frames of 64×64 for the full-size preset.

Clip i of a split uses garment i of that split (Fashion-MNIST train for train, test for test) and a
motion drawn from a generator seeded by (split, i): one of 8 compass directions at a speed drawn from
[speed_min, speed_max] pixels per frame per moving axis (1 to 2 by default), from a start point chosen
so the garment stays whole on the canvas for every frame — optionally on a grid of `start_grid` pixels
(the demo: 4, its tokenizer's patch, so a first frame's tokens see a garment in one of few placements). Positions are rounded to whole pixels, so every frame holds the garment's
pixels exactly. The label is the garment's class (`label="class"`) or its direction of motion
(`label="motion"`); the other one is kept as `aux_labels`.
"""
from __future__ import annotations

import numpy as np

from ..choices import MOVING_LABELS
from .fmnist import FMNIST_CLASSES, load_fmnist

DIRECTIONS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")
_STEPS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))  # (dx, dy) per direction
GARMENT = 28
VERSION = 1  # bump when the generator changes: it is part of the data's identity (cache keys)


def motions(n: int, split: str, frames: int, size: int, seed: int = 0,
            speed: tuple[float, float] = (1.0, 2.0), start_grid: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Direction ids (n,) and top-left positions (n, frames, 2) as (x, y) pixel offsets."""
    room = size - GARMENT
    if room < 0:
        raise ValueError(f"moving-fmnist canvas {size} is smaller than a garment ({GARMENT}); use image_size >= 28")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    direction = rng.integers(0, len(DIRECTIONS), n)
    speed = rng.uniform(speed[0], speed[1], n)
    step = np.asarray(_STEPS, dtype=np.float64)[direction] * speed[:, None]           # (n, 2) px per frame
    travel = step * (frames - 1)
    lo, hi = np.maximum(0, -travel), np.minimum(room, room - travel)                 # start range per axis
    hi = np.maximum(hi, lo)  # a canvas too small for the full travel: the garment stops at the edge
    u = rng.uniform(size=(n, 2))
    start = lo + u * (hi - lo)
    if start_grid > 1:  # the multiples of start_grid in [lo, hi], drawn alike (none: the unaligned start)
        first, last = np.ceil(lo / start_grid - 1e-9) * start_grid, np.floor(hi / start_grid + 1e-9) * start_grid
        count = (last - first) / start_grid + 1
        aligned = first + np.minimum(np.floor(u * np.maximum(count, 1)), np.maximum(count - 1, 0)) * start_grid
        start = np.where(last >= first, aligned, start)
    t = np.arange(frames, dtype=np.float64)[None, :, None]
    pos = np.clip(np.rint(start[:, None] + t * step[:, None]), 0, room).astype(np.int64)
    return direction, pos


def render(garments: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """garments uint8 (n, 28, 28), positions (n, frames, 2) → clips uint8 (n, frames, size, size, 1)."""
    n, frames = positions.shape[:2]
    clips = np.zeros((n, frames, size, size, 1), dtype=np.uint8)
    rows = np.arange(GARMENT)
    for f in range(frames):
        x, y = positions[:, f, 0], positions[:, f, 1]
        r = (y[:, None] + rows)[:, :, None]                                            # (n, 28, 1)
        c = (x[:, None] + rows)[:, None, :]                                            # (n, 1, 28)
        clips[np.arange(n)[:, None, None], f, r, c, 0] = garments
    return clips


def load_moving_fmnist(split: str, data_dir: str | None = None, frames: int = 16, size: int = 64,
                       clips: int | None = None, label: str = "class", speed: tuple[float, float] = (1.0, 2.0),
                       start_grid: int = 1):
    """(clips uint8 (N, frames, size, size, 1), labels, aux_labels, class names)."""
    if label not in MOVING_LABELS:
        raise ValueError(f"moving-fmnist label must be 'class' or 'motion', got {label!r}")
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got data.frames={frames}")
    images, classes = load_fmnist(split, data_dir)
    n = len(images) if clips is None else min(clips, len(images))
    if not 0 < speed[0] <= speed[1]:
        raise ValueError(f"moving-fmnist speeds must satisfy 0 < data.speed_min <= data.speed_max, got {speed}")
    direction, pos = motions(n, split, frames, size, speed=speed, start_grid=start_grid)
    video = render(images[:n, :, :, 0], pos, size)
    if label == "class":
        return video, classes[:n], direction, list(FMNIST_CLASSES)
    return video, direction, classes[:n], list(DIRECTIONS)
