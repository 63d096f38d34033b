"""`elt demo`: train a preset, evaluate L = 1 … Lmax+2, write the any-time grid and the time split."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..metrics.anytime import format_table
from ..utils.atomic import write_json
from .build import load_split
from .cache import get_classifier, get_tokenizer, get_video_classifier
from .distributed import resolve_device
from .evaluation import evaluate, frame_judge_data
from .media import Labels, save_grid, save_video_grid
from .run import Run, load_run
from .sampling import generate, gflops_per_sample, sampling_settings
from .train import train

log = logging.getLogger("elt")


def anytime_grid(run: Run, loops: list[int], seed: int, path: Path) -> Path:
    """One row per L (labelled with its GFLOPs per sample), one column per class (labelled with its name),
    the same seed in every row, the sampling settings in a caption: a PNG (images) or an animated GIF
    (and MP4 where PyAV is installed) for video. Returns the grid's path."""
    labels = torch.arange(run.num_classes)
    rows = np.concatenate([generate(run, L, labels, seed) for L in loops])
    s = sampling_settings(run)
    captions = Labels(
        rows=[f"L={L} · {gflops_per_sample(run, L, s['steps'], s['guidance']):.3g} GFLOPs" for L in loops],
        cols=list(run.class_names),
        caption=f"{run.cfg.name} ({run.cfg.objective_label()}), checkpoint step {run.step}: rows L = loops per "
                f"sampling step, columns classes; {s['steps']} steps, guidance {s['guidance']:g}, seed {seed} "
                f"in every row, {'EMA' if s['ema'] else 'raw'} weights")
    if rows.ndim == 5:
        path = path.with_suffix(".gif")
        save_video_grid(rows, len(loops), run.num_classes, path, scale=2 if rows.shape[2] <= 64 else 1, labels=captions)
    else:
        save_grid(rows, len(loops), run.num_classes, path, scale=3 if rows.shape[1] <= 32 else 1, labels=captions)
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
    write_json(out / "timing.json", timing)
    print(format_table(report))
    print("time split: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timing.items()))
    print(f"wrote {out / 'anytime.json'}, {out / 'anytime.png'}, {grid}")
    return report
