"""`elt demo`: train a preset, evaluate L = 1 … Lmax+2, write the any-time grid and the time split."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..metrics.anytime import format_table, save_grid
from .assets import get_classifier, get_tokenizer, load_split
from .generate import evaluate, generate, load_run
from .train import train

log = logging.getLogger("elt")


def anytime_grid(run, loops: list[int], seed: int, path: Path) -> None:
    """One row per L, one column per class, same seed in every row."""
    labels = torch.arange(run.num_classes)
    rows = [generate(run, L, labels, seed) for L in loops]
    save_grid(np.concatenate(rows), len(loops), run.num_classes, path, scale=3 if rows[0].shape[1] <= 32 else 1)


def demo(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    out = Path(out)
    timing = {}
    tic = time.perf_counter()
    data = load_split(cfg, "train")
    get_tokenizer(cfg, data, seed=cfg.train.seed, progress=progress)  # trained here (or cached), timed apart
    timing["tokenizer_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    get_classifier(cfg, data, progress)
    timing["metric_classifier_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    train(cfg, out, resume=resume, progress=progress)
    timing["train_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    run = load_run(out)
    loops = cfg.eval.loops or list(range(1, cfg.model.max_loops + 3))
    report = evaluate(run, loops, progress=progress)
    anytime_grid(run, loops, cfg.eval.seed, out / "anytime_grid.png")
    timing["evaluate_s"] = time.perf_counter() - tic
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(format_table(report))
    print("time split: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timing.items()))
    print(f"wrote {out / 'anytime.json'}, {out / 'anytime.png'}, {out / 'anytime_grid.png'}")
    return report
