"""Large class-balanced sample sets for FID/FVD (50 per class for ImageNet's 50k), across ranks and
resumable: `elt sample --folder DIR`.

The set is cut into shards of `shard_size` samples. Shard i holds labels [i·s, (i+1)·s) of the
balanced label list and draws from its own generator, seeded (seed, i), so its samples depend neither
on how many processes run nor on which one takes it. Ranks take shards round-robin; each shard is
written atomically (`shard_00012.npz`), so an interrupted job resumes with the missing shards only.
`manifest.json` holds every setting; the folder's name repeats them (L, steps, cfg, temperatures,
seed, checkpoint step), so numbers never get mixed up. When all shards exist, rank 0 joins them into
`samples.npz` (`images`, `labels`) and, for images, the ADM evaluator's `samples_adm.npz` (`arr_0`,
`arr_1`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..utils.atomic import write_text
from .distributed import rank_world
from .media import export_adm_npz
from .run import Run
from .sampling import balanced_labels, sample_local, sampling_settings
from .store import save_arrays
from ..utils.progress import bar

log = logging.getLogger("elt")


def folder_name(run: Run, settings: dict) -> str:
    """`<run>_ckpt<step>_L<loops>_K<steps>_cfg<cfg>[_temp<t>]_seed<seed>_n<n>`, from the settings."""
    parts = [run.path.name, f"ckpt{settings['checkpoint_step']}", f"L{settings['loops']}"]
    parts.append(f"K{settings['steps']}")
    parts.append(f"guidance{settings['guidance']}")
    for k in sorted(settings):
        if "temp" in k:
            parts.append(f"{k}{settings[k]}")
    parts += [f"seed{settings['seed']}", f"n{settings['n']}"]
    if settings.get("ema") is False:
        parts.append("raw")  # raw weights instead of the EMA's
    return "_".join(str(p).replace("/", "-").replace(" ", "") for p in parts)


def _shard_ok(path: Path, n: int) -> bool:
    try:
        with np.load(path) as z:
            return len(z["images"]) == n and len(z["labels"]) == n
    except Exception:  # a damaged shard is sampled again
        return False


def sample_folder(run: Run, policy, how: dict, out_root: str | Path, n: int, seed: int = 0, steps: int | None = None,
                  guidance: float | None = None, shard_size: int = 1000, classes: list[int] | None = None,
                  progress: bool = True) -> Path:
    """Writes (or completes) the sample folder under `out_root` and returns its path."""
    rank, world = rank_world()
    settings = {**how, **sampling_settings(run, steps, guidance), "seed": seed, "checkpoint_step": run.step,
                "n": n, "shard_size": shard_size, "classes": classes}
    folder = Path(out_root) / folder_name(run, settings)
    manifest = folder / "manifest.json"
    labels = balanced_labels(n, run.num_classes, classes)
    shards = [(i, labels[i * shard_size: (i + 1) * shard_size]) for i in range((n + shard_size - 1) // shard_size)]
    meta = {"run": str(run.path), "settings": settings, "num_shards": len(shards),
            "class_names": run.class_names, "per_class": {c: int((labels == c).sum()) for c in labels.unique().tolist()}}
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        if manifest.is_file():
            old = json.loads(manifest.read_text())
            if old.get("settings") != json.loads(json.dumps(settings)):
                raise ValueError(f"{folder} holds samples made with other settings; choose another --folder (or move that one aside)")
        else:
            write_text(manifest, json.dumps(meta, indent=2) + "\n")
    if world > 1:
        dist.barrier()
    mine = [(i, lab) for i, lab in shards[rank::world] if not _shard_ok(folder / f"shard_{i:05d}.npz", len(lab))]
    done = len(shards[rank::world]) - len(mine)
    if done and rank == 0:
        log.info("resuming %s: %d shards already there", folder, done)
    for i, lab in bar(mine, desc="shards", progress=progress and rank == 0):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        images = sample_local(run, policy, lab, gen, steps, guidance)
        save_arrays(folder / f"shard_{i:05d}.npz", images=images, labels=lab.numpy().astype(np.int64))
    if world > 1:
        dist.barrier()
    if rank == 0:
        join(folder, len(shards))
    return folder


def join(folder: Path, num_shards: int) -> None:
    """samples.npz (+ samples_adm.npz for images) from the shards, in label order."""
    images, labels = [], []
    for i in range(num_shards):
        with np.load(folder / f"shard_{i:05d}.npz") as z:
            images.append(z["images"])
            labels.append(z["labels"])
    images, labels = np.concatenate(images), np.concatenate(labels)
    save_arrays(folder / "samples.npz", images=images, labels=labels)
    if images.ndim == 4:
        export_adm_npz(images, folder / "samples_adm.npz", labels)
    log.info("wrote %d samples to %s", len(images), folder / "samples.npz")
