"""The paper-scale image metrics' maths, on features from any extractor (`elt.metrics.inception`):
streaming Gaussian statistics that reduce across ranks (for FID/FVD), the Inception Score, and
precision/recall with k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019, k = 3).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from ..utils.atomic import atomic_path


class StreamingStats:
    """Running sum, sum of outer products and count of features, in float64, so statistics of 50k
    samples never hold all features at once; `reduce()` sums them over the ranks of a process group."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def update(self, features) -> None:
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != len(self.sum):
            raise ValueError(f"expected features (N, {len(self.sum)}), got {f.shape}")
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def reduce(self) -> StreamingStats:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            flat = torch.from_numpy(np.concatenate([[self.n], self.sum, self.outer.ravel()])).to(dev)
            dist.all_reduce(flat)
            flat = flat.cpu().numpy()
            d = len(self.sum)
            self.n, self.sum, self.outer = int(round(flat[0])), flat[1:1 + d], flat[1 + d:].reshape(d, d)
        return self

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """μ and the unbiased covariance (as `np.cov`)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        mu = self.sum / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    def save(self, path) -> None:
        """μ, Σ and n as an .npz, written to a temporary name and renamed."""
        mu, sigma = self.mean_cov()
        with atomic_path(path) as tmp:
            np.savez(tmp, mu=mu, sigma=sigma, n=self.n)


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) ‖ p(y))) over `splits` equal parts: (mean, std), as in Salimans et al. 2016."""
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if lg.ndim != 2 or len(lg) < splits:
        raise ValueError(f"need logits (N >= splits={splits}, classes), got {tuple(lg.shape)}")
    logp = lg.log_softmax(1)
    scores = []
    for part in logp.chunk(splits):
        p = part.exp()
        logpy = p.mean(0).log()
        kl = torch.where(p > 0, p * (part - logpy), 0.0).sum(1).mean()  # 0·log 0 = 0
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_radius(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    out = []
    for i in range(0, len(x), batch):
        d = torch.cdist(x[i: i + batch], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(out)


def _covered(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    """Whether each query lies within the radius of at least one point."""
    out = []
    for i in range(0, len(queries), batch):
        out.append((torch.cdist(queries[i: i + batch], points) <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(real, fake, k: int = 3, batch: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision = share of fake samples
    inside the real manifold (union of balls reaching each real sample's k-th neighbour), recall = the
    share of real samples inside the fake manifold. Features (N, D); float64."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1] or min(len(r), len(f)) <= k:
        raise ValueError(f"need two feature sets (N > k={k}, D) of equal D, got {tuple(r.shape)} and {tuple(f.shape)}")
    precision = _covered(f, r, _kth_radius(r, k, batch), batch).double().mean()
    recall = _covered(r, f, _kth_radius(f, k, batch), batch).double().mean()
    return float(precision), float(recall)
