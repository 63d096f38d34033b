"""`elt demo`: train a preset, evaluate L = 1 … Lmax+2, write the any-time grid and the time split."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..metrics.anytime import format_table, save_grid, save_video_grid
from .assets import frame_judge_data, get_classifier, get_tokenizer, get_video_classifier, load_split
from .distributed import resolve_device
from .generate import evaluate, generate, load_run
from .train import train

log = logging.getLogger("elt")


def anytime_grid(run, loops: list[int], seed: int, path: Path) -> Path:
    """One row per L, one column per class, same seed in every row: a PNG (images) or an animated
    GIF (and MP4 where PyAV is installed) for video. Returns the grid's path."""
    labels = torch.arange(run.num_classes)
    rows = np.concatenate([generate(run, L, labels, seed) for L in loops])
    if rows.ndim == 5:
        path = path.with_suffix(".gif")
        save_video_grid(rows, len(loops), run.num_classes, path, scale=2 if rows.shape[2] <= 64 else 1)
    else:
        save_grid(rows, len(loops), run.num_classes, path, scale=3 if rows.shape[1] <= 32 else 1)
    return path


def demo(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    out = Path(out)
    timing = {}
    tic = time.perf_counter()
    data = load_split(cfg, "train")
    get_tokenizer(cfg, data, seed=cfg.train.seed, progress=progress)  # trained here (or cached), timed apart
    timing["tokenizer_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    if data.is_video:  # the 3D classifier of clips and the image classifier of their frames
        get_video_classifier(cfg, data, progress)
        get_classifier(cfg, frame_judge_data(cfg, data)[1], progress)
    else:
        get_classifier(cfg, data, progress)
    del data
    timing["metric_classifier_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    train(cfg, out, resume=resume, progress=progress)
    timing["train_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    run = load_run(out, device=resolve_device(cfg.train.device))  # sampled where it trained
    loops = cfg.eval.loops or list(range(1, cfg.model.max_loops + 3))
    report = evaluate(run, loops, progress=progress)
    grid = anytime_grid(run, loops, cfg.eval.seed, out / "anytime_grid.png")
    timing["evaluate_s"] = time.perf_counter() - tic
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(format_table(report))
    print("time split: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timing.items()))
    print(f"wrote {out / 'anytime.json'}, {out / 'anytime.png'}, {grid}")
    return report
