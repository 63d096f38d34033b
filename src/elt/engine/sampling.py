"""Sampling a loaded run: class-balanced labels, the sampler with the run's (or given) settings, images
or clips as uint8 arrays, split across torchrun ranks and gathered back in label order; the settings
that name every output; the network GFLOPs of one sample."""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import torch
import torch.distributed as dist

from ..core.loops import as_policy, check_sampling_loops
from ..utils.arrays import to_uint8
from ..utils.progress import bar
from . import precision
from .build import build_sampler
from .distributed import rank_world
from .run import Run

log = logging.getLogger("elt")


def balanced_labels(n: int, num_classes: int, classes: list[int] | None = None) -> torch.Tensor:
    """n labels cycling through `classes` (default: all), so every class gets n/len(classes)."""
    pool = list(range(num_classes)) if classes is None else list(classes)
    bad = [c for c in pool if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class ids {bad} are outside 0..{num_classes - 1}; this model has {num_classes} classes")
    if not pool:
        raise ValueError("the class list is empty; give at least one class id")
    return torch.tensor([pool[i % len(pool)] for i in range(n)], dtype=torch.long)


def sampler_for(run: Run, steps: int | None = None, guidance: float | None = None):
    s = run.cfg.sample
    overrides = {k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None}
    return build_sampler(dataclasses.replace(run.cfg, sample=dataclasses.replace(s, **overrides)), run.tokenizer)


def sampling_settings(run: Run, steps: int | None = None, guidance: float | None = None) -> dict:
    """Every setting that changes the samples, for reports and output names (the sampler's own, the
    precision the network ran in, EMA or raw weights, the kind of device)."""
    return {**sampler_for(run, steps, guidance).settings(),
            "precision": precision.resolve(run.cfg.sample.precision, run.device),
            "ema": run.cfg.sample.use_ema, "device": run.device.type}


@torch.no_grad()
def generate(run: Run, policy, labels: torch.Tensor, seed: int = 0, steps: int | None = None,
             guidance: float | None = None, progress: bool = False) -> np.ndarray:
    """Images uint8 (N, H, W, C) or clips (N, T, H, W, C) for `labels`; same seed (and process count)
    → same images.

    Under torchrun every rank samples every world_size-th label (seeded seed + rank) and the images
    are gathered back into label order on every rank."""
    rank, world = rank_world()
    gen = torch.Generator().manual_seed(seed + rank)
    out = sample_local(run, policy, labels[rank::world], gen, steps, guidance, progress and rank == 0)
    if world == 1:
        return out
    parts = [None] * world
    dist.all_gather_object(parts, out)  # a rank with no labels sends an empty array
    parts = [p for p in parts if len(p)]
    full = np.empty((len(labels), *parts[0].shape[1:]), np.uint8)
    for r, part in enumerate(parts):  # ranks with no labels are the last ones, so r stays aligned
        full[r::world] = part
    return full


@torch.no_grad()
def sample_local(run: Run, policy, labels: torch.Tensor, gen: torch.Generator, steps: int | None = None,
                 guidance: float | None = None, progress: bool = False) -> np.ndarray:
    """This process's samples for `labels`, in batches of sample.batch_size, drawing from `gen`."""
    sampler = sampler_for(run, steps, guidance)
    policy = as_policy(policy)
    check_sampling_loops(policy, sampler.steps, run.cfg.model.max_loops)
    out = []
    bs = run.cfg.sample.batch_size
    device = run.device
    tic = time.perf_counter()
    for i in bar(range(0, len(labels), bs), desc=f"sample {policy}", progress=progress, leave=False):
        with precision.autocast(run.cfg.sample.precision, device):  # the network only; the sampler's maths stays fp32
            ids = sampler(run.model, labels[i: i + bs].to(device), policy, gen)
        out.append(to_uint8(run.tokenizer.decode(ids)))
        if i == 0 and len(labels) > 4 * bs:  # a long job says how long, measured on its first batch
            say_duration(len(labels), bs, time.perf_counter() - tic)
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)  # no labels: an empty array


def say_duration(n: int, batch: int, first_batch_s: float) -> float:
    """Log the time `n` samples will take from the first batch's when it is over two minutes; a warning
    beyond an hour. Returns the seconds."""
    total = first_batch_s * math.ceil(n / batch)
    text = (f"{total / 86400:.1f} days" if total > 2 * 86400 else f"{total / 3600:.1f} hours" if total > 3600
            else f"{total / 60:.0f} min")
    if total > 120:  # only a job long enough to plan around
        (log.warning if total > 3600 else log.info)(
            "%d samples: about %s on this machine (the first batch of %d took %.1f s); Ctrl-C stops it", n, text,
            batch, first_batch_s)
    return total


def gflops_per_sample(run: Run, policy, steps: int, guidance: float) -> float:
    """Network GFLOPs of sampling one example (guidance doubles the batch); tokenizer decode excluded."""
    return sampler_for(run, steps, guidance).flops(run.model, policy) / 1e9
