"""Offline video metrics: a small 3D-conv classifier trained by elt on the clips, whose features give
an FVD-style Fréchet distance (named after it: `fd_mfmnist_c3d`, never "FVD"), and per-frame views
for the image classifier (the garment crop of moving Fashion-MNIST, or the whole frame).

Real FVD with the standard I3D network is in `elt.metrics.i3d`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.arrays import as_tensor, to_float
from .classifier import fit_classifier


class C3DClassifier(nn.Module):
    """Three stride-2 3×3×3 convs (space first, then time too), a 4×4×4 average pool, a 128-d feature
    layer and one linear head per label kind: the clip's label and, when the data has one, its
    auxiliary label (moving Fashion-MNIST: the motion for class-labelled clips), so the features
    carry both what moves and how."""

    def __init__(self, channels: int = 1, num_classes: int = 10, num_aux: int = 0, feature_dim: int = 128,
                 max_side: int = 32):
        super().__init__()
        self.max_side, self.feature_dim = max_side, feature_dim
        self.conv = nn.Sequential(
            nn.Conv3d(channels, 16, 3, (1, 2, 2), 1), nn.ReLU(),
            nn.Conv3d(16, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv3d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool3d(4))
        self.fc = nn.Linear(64 * 4 ** 3, feature_dim)
        self.drop = nn.Dropout(0.3)
        self.cls = nn.Linear(feature_dim, num_classes)
        self.aux = nn.Linear(feature_dim, num_aux) if num_aux else None

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, C, T, H, W) in [0, 1] → features (B, feature_dim); sides above `max_side` are
        average-pooled down first."""
        pool = max(1, clips.shape[-1] // self.max_side)
        if pool > 1:
            clips = F.avg_pool3d(clips, (1, pool, pool))
        return F.relu(self.fc(self.conv(clips * 2 - 1).flatten(1)))

    def forward(self, clips: torch.Tensor):
        f = self.drop(self.features(clips))
        return self.cls(f), (self.aux(f) if self.aux is not None else None)

    @torch.no_grad()
    def features_and_predictions(self, clips, batch_size: int = 200):
        """uint8 clips (N, T, H, W, C) or float (N, C, T, H, W) → (features float64 (N, D), predictions (N,))."""
        self.eval()
        feats, preds = [], []
        for i in range(0, len(clips), batch_size):
            x = clips[i: i + batch_size]
            x = to_float(x) if x.dtype in (np.uint8, torch.uint8) else x
            f = self.features(x)
            feats.append(f)
            preds.append(self.cls(f).argmax(1))
        return torch.cat(feats).double().numpy(), torch.cat(preds).numpy()


def train_video_classifier(model: C3DClassifier, clips: np.ndarray, labels: np.ndarray, aux: np.ndarray | None,
                           epochs: float = 2.0, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                           progress: bool = True) -> C3DClassifier:
    """AdamW with one-cycle on uint8 clips (N, T, H, W, C); cross-entropy on the label (+ the aux label)."""
    x, y = as_tensor(clips), torch.as_tensor(labels)
    ya = None if aux is None or model.aux is None else torch.as_tensor(aux)

    def batch_loss(idx):
        logits, aux_logits = model(to_float(x[idx]))
        loss = F.cross_entropy(logits, y[idx])
        return loss if ya is None else loss + F.cross_entropy(aux_logits, ya[idx])
    return fit_classifier(model, len(x), batch_loss, epochs, batch_size, lr, seed, progress, "metric classifier (3D)")


def object_crops(frames: torch.Tensor, size: int = 28) -> torch.Tensor:
    """Frames (M, C, H, W) → the size×size window centred on the object (M, C, size, size).

    The window is the centre of the plateau of windows holding the most intensity: for a garment
    narrower than the window every window around it holds all of it, and the plateau's centre
    centres it (moving Fashion-MNIST frames give back their garment exactly)."""
    m, c, h, w = frames.shape
    if h < size or w < size:
        raise ValueError(f"frames of {h}x{w} are smaller than the crop {size}")
    # Black margins of `size` on every side: the plateau of an object at the frame's edge is not cut
    # short by the edge (which would shift its centre), so its window is its own box there too.
    frames = F.pad(frames, (size, size, size, size))
    ii = F.pad(frames.float().mean(1).cumsum(1).cumsum(2), (1, 0, 1, 0))                # integral image
    box = ii[:, size:, size:] - ii[:, :-size, size:] - ii[:, size:, :-size] + ii[:, :-size, :-size]  # window sums
    top = box.flatten(1).amax(1)[:, None, None]
    plateau = (box >= top - 1e-3 - 1e-4 * top).float()
    ys = torch.arange(box.shape[1], dtype=torch.float32)[None, :, None]
    xs = torch.arange(box.shape[2], dtype=torch.float32)[None, None, :]
    count = plateau.sum((1, 2))
    y0 = ((plateau * ys).sum((1, 2)) / count).round().long()
    x0 = ((plateau * xs).sum((1, 2)) / count).round().long()
    r = torch.arange(size)
    rows = (y0[:, None] + r)[:, None, :, None]
    cols = (x0[:, None] + r)[:, None, None, :]
    return frames[torch.arange(m)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def frame_views(clips: np.ndarray, crop: int | None) -> np.ndarray:
    """uint8 clips (N, T, H, W, C) → uint8 frames (N·T, h, w, C) for the image classifier: every frame,
    cropped to the object when `crop` is set."""
    frames = as_tensor(clips).flatten(0, 1)
    if crop is None:
        return frames.numpy()
    return object_crops(frames.movedim(-1, 1), crop).movedim(1, -1).contiguous().numpy()


def border_frames(clips: np.ndarray, threshold: int = 64) -> float:
    """The fraction of frames of uint8 clips (N, T, H, W, C) whose object reaches the canvas border: a pixel of
    the 1-pixel outer ring at `threshold` or brighter. Moving Fashion-MNIST's garments never leave the canvas,
    so real clips set the level a generator should not exceed (an object leaving the frame is cut by it)."""
    clips = np.asarray(clips)
    frames = clips.reshape(-1, *clips.shape[2:])                                    # (N·T, H, W, C)
    ring = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    return float((ring >= threshold).any(axis=(1, 2)).mean())
