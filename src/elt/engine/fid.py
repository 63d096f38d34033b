"""FID and FVD of sample files (`elt fid`, `elt fvd`): FID, Inception Score and precision/recall of a sample
file against a reference with the standard FID Inception from a local weights file; FVD of clips with
StyleGAN-V's I3D.

Samples and references are `.npz` files of uint8 images (N, H, W, C) under `arr_0` (the ADM
evaluator's layout, e.g. its `VIRTUAL_imagenet256_labeled.npz`) or `images` (what `elt sample`
writes). The reference's features are computed once and cached (keyed by the file's size, mtime and
path and the weights' hash): their statistics for FID and the first `pr_n` features for precision and
recall. Reference statistics precomputed with TensorFlow (the ADM batch's `mu`/`sigma`) are not used:
elt computes its own with the same network, so both sides match.

Under `torchrun` each rank takes a contiguous share of the images; the statistics are summed across
ranks (`StreamingStats.reduce`), logits and the precision/recall features gathered, and rank 0
writes the cache: the numbers equal one process's up to float summation order.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch.distributed as dist

from ..metrics.frechet import frechet_distance
from ..metrics.inception import InceptionFeatures
from ..metrics.scores import StreamingStats, inception_score, precision_recall
from ..utils.files import sha256_of
from ..utils.progress import bar
from .checkpoint import save_arrays
from .devices import rank_world
from .prepare import cache_dir

log = logging.getLogger("elt")


def load_images_npz(path: str | Path) -> np.ndarray:
    """uint8 images (N, H, W, C) from an `.npz` (`arr_0` or `images`), memory-mapped where possible."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file {p} not found; give an .npz written by `elt sample` or an ADM batch")
    try:
        z = np.load(p, mmap_mode="r")
        files = z.files
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{p} is not a readable .npz ({e}); write it again") from None
    key = "arr_0" if "arr_0" in files else "images" if "images" in files else None
    if key is None:
        raise ValueError(f"{p} holds {files}, not arr_0 or images; write it with `elt sample` or export_adm_npz")
    try:
        x = z[key]
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{p} is not a readable .npz ({e}); write it again") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{p}: expected uint8 images (N, H, W, 1 or 3), got {x.dtype} {x.shape}")
    return x


def streamed(fn, items, chunk: int, keep: int = 0, progress: bool = True, desc: str = ""):
    """Runs `fn(batch) -> (features, *extras)` over `items` in chunks, each rank over its contiguous
    share; returns (the features' StreamingStats summed over the ranks, each extra output of all
    items in order, the first `keep` features of all items in order). One process: every item."""
    rank, world = rank_world()
    n = len(items)
    if n < world:
        raise ValueError(f"{n} items for {world} ranks: run with at most {n} processes")
    start, stop = rank * n // world, (rank + 1) * n // world
    stats, extras, kept = None, [], []
    for i in bar(range(start, stop, chunk), desc=desc, progress=progress and rank == 0):
        batch = np.ascontiguousarray(items[i: min(i + chunk, stop)])  # a lazy source may skip unreadable items
        if not len(batch):
            continue
        f, *ex = fn(batch)
        stats = stats or StreamingStats(f.shape[1])
        stats.update(f)
        extras.append([e.astype(np.float32) for e in ex])
        if i < keep:
            kept.append(f[: keep - i].astype(np.float32))
    if stats is None:
        raise ValueError(f"{desc}: none of items {start}..{stop - 1} could be read (rank {rank})")
    stats.reduce()
    out = [_gather([e[j] for e in extras]) for j in range(len(extras[0]))]
    return stats, *out, _gather(kept)


def _gather(parts: list) -> np.ndarray:
    """Arrays of every rank, concatenated in rank order (one process: its own)."""
    world = rank_world()[1]
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, parts)
        parts = [a for rank_parts in every for a in rank_parts]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def features(net: InceptionFeatures, images: np.ndarray, batch_size: int, keep: int, progress: bool, desc: str):
    """Streams images through the network (split across ranks under torchrun): (StreamingStats of
    the pool features, all logits, the first `keep` features)."""
    return streamed(lambda x: net(x, batch_size), images, batch_size * 8, keep, progress, desc)


def _cached(kind: str, ref: Path, parts: list, compute) -> dict:
    """Arrays computed once per (reference file or folder, its size and mtime, `parts`) and cached."""
    p = ref.resolve()
    st = p.stat()
    key = hashlib.sha1(json.dumps([str(p), st.st_size, int(st.st_mtime), *parts]).encode()).hexdigest()[:16]
    path = cache_dir() / f"{kind}-ref-{key}.npz"
    if path.is_file():
        log.info("using cached reference statistics %s", path)
        with np.load(path) as z:
            return dict(z)
    arrays = compute()  # every rank takes part (a collective under torchrun); rank 0 writes
    if rank_world()[0] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_arrays(path, **arrays)
        log.info("cached reference statistics at %s", path)
    return arrays


def reference_features(net: InceptionFeatures, ref: str | Path, weights_hash: str, batch_size: int, pr_n: int,
                       progress: bool):
    """(μ, Σ, first pr_n features) of the reference images, cached."""
    def compute():
        stats, _, kept = features(net, load_images_npz(ref), batch_size, pr_n, progress, "reference features")
        mu, sigma = stats.mean_cov()
        return {"mu": mu, "sigma": sigma, "feats": kept}
    z = _cached("inception", Path(ref), [weights_hash, pr_n], compute)
    return z["mu"], z["sigma"], z["feats"]


def image_metrics(samples: str | Path, ref: str | Path, inception: str, sha256: str | None = None,
                  device: str = "cpu", batch_size: int = 100, pr_n: int = 10_000, progress: bool = True) -> dict:
    """{"fid", "is", "is_std", "precision", "recall", "n_samples"} of `samples` against `ref`."""
    net = InceptionFeatures(inception, sha256, device)
    weights_hash = sha256 or sha256_of(inception)
    mu_r, sigma_r, feats_r = reference_features(net, ref, weights_hash, batch_size, pr_n, progress)
    images = load_images_npz(samples)
    stats, logits, feats = features(net, images, batch_size, pr_n, progress, "sample features")
    mu, sigma = stats.mean_cov()
    is_mean, is_std = inception_score(logits, splits=min(10, len(logits)))
    prec, rec = precision_recall(feats_r, feats, k=3)
    return {"fid": frechet_distance(mu, sigma, mu_r, sigma_r), "is": is_mean, "is_std": is_std,
            "precision": prec, "recall": rec, "n_samples": int(stats.n), "inception_backend": net.backend,
            "samples": str(samples), "reference": str(ref)}


def load_clips(path: str | Path, n: int | None, frames: int = 16, size: int = 128, progress: bool = True,
               lazy: bool = False):
    """uint8 clips (N, T, H, W, C): an `.npz` (`images`, as `elt sample` writes) or a UCF-101 folder
    (its official train list, split 1: the first n clips, `frames` from each video's middle). `lazy`:
    a folder's clips are decoded when sliced (`UCF101Clips`), so each rank decodes only its share."""
    p = Path(path)
    if p.is_dir():
        from ..data.ucf101 import UCF101Clips, load_ucf101
        if lazy:
            return UCF101Clips(str(p), "train", frames, size, 1, n)
        return load_ucf101(str(p), "train", frames, size, 1, n, progress=progress)[0]
    if not p.is_file():
        raise FileNotFoundError(f"clip file {p} not found; give an .npz written by `elt sample` or a UCF-101 folder")
    with np.load(p) as z:
        if "images" not in z.files:
            raise ValueError(f"{p} holds {z.files}, not `images`; write it with `elt sample` on a video run")
        x = z["images"][:n]
    if x.dtype != np.uint8 or x.ndim != 5:
        raise ValueError(f"{p}: expected uint8 clips (N, T, H, W, C), got {x.dtype} {x.shape}")
    return x


def video_metrics(samples: str | Path, ref: str | Path, i3d: str, sha256: str | None = "default",
                  device: str = "cpu", batch_size: int = 16, ref_clips: int = 2048, progress: bool = True) -> dict:
    """{"fvd", "n_samples", "n_reference"}: Fréchet distance of I3D features (StyleGAN-V's detector).
    The reference statistics (of `ref_clips` real clips) are cached."""
    from ..metrics.i3d import I3D_SHA256, I3DFeatures

    net = I3DFeatures(i3d, I3D_SHA256 if sha256 == "default" else sha256, device)
    clips = load_clips(samples, None, progress=progress)
    size = clips.shape[2]

    def stats(x, desc):
        return streamed(lambda c: (net(c, batch_size),), x, batch_size, progress=progress, desc=desc)[0]

    def compute():
        real = load_clips(ref, ref_clips, clips.shape[1], size, progress, lazy=True)
        s = stats(real, "reference I3D features")
        mu, sigma = s.mean_cov()
        return {"mu": mu, "sigma": sigma, "n": np.asarray(s.n)}
    z = _cached("i3d", Path(ref), [sha256_of(i3d), ref_clips, list(clips.shape[1:])], compute)
    mu, sigma = stats(clips, "sample I3D features").mean_cov()
    return {"fvd": frechet_distance(mu, sigma, z["mu"], z["sigma"]), "n_samples": len(clips),
            "n_reference": int(z["n"]), "samples": str(samples), "reference": str(ref)}
