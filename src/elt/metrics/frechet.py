"""Fréchet distance between Gaussians fitted to features, in float64.

d² = ‖μ1 − μ2‖² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1 Σ2)^½), with tr((Σ1 Σ2)^½) computed as the sum of
square roots of the eigenvalues of Σ1^½ Σ2 Σ1^½ (symmetric PSD, so `eigh` is exact and stable).
"""
from __future__ import annotations

import numpy as np


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N>=2, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature statistics differ in shape: {mu1.shape}/{s1.shape} vs {mu2.shape}/{s2.shape}")
    r1 = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    d2 = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    return max(0.0, float(d2))  # ≥ 0 by definition; identical sets give rounding-level negatives
