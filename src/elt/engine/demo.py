"""`elt demo`: one run from a preset — its data prepared once (split, tokenizer, tokens, metric classifiers),
trained, evaluated at L = 1 … Lmax+2, its any-time grid drawn — and the time each part took."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

from ..config import Config
from ..metrics.anytime import format_table
from ..utils.atomic import write_json
from .devices import DistInfo, resolve_device
from .evaluation import anytime_grid, evaluate
from .prepare import Split, metric_classifiers, prepare
from .run import load_run
from .train import train

log = logging.getLogger("elt")


def demo(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    out, timing = Path(out), {}

    @contextmanager
    def timed(part: str):
        tic = time.perf_counter()
        yield
        timing[part] = time.perf_counter() - tic

    device = resolve_device(cfg.train.device)  # trained, sampled and judged where it trains
    split = Split.of(cfg, "train")  # loaded once, by whichever part first needs its examples
    with timed("tokenizer_s"):
        prepared = prepare(cfg, DistInfo(device=device), progress, split)
    with timed("metric_classifier_s"):
        classifiers = metric_classifiers(cfg, split, progress)
    with timed("train_s"):
        train(cfg, out, resume=resume, progress=progress, prepared=prepared)
    del prepared, split
    with timed("evaluate_s"):
        run = load_run(out, device=device)
        loops = cfg.eval.loops or list(range(1, cfg.model.max_loops + 3))
        report = evaluate(run, loops, classifiers=classifiers, progress=progress)
        grid = anytime_grid(run, loops, cfg.eval.seed, out / "anytime_grid.png")
    write_json(out / "timing.json", timing)
    print(format_table(report))
    print("time split: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timing.items()))
    print(f"wrote {out / 'anytime.json'}, {out / 'anytime.png'}, {grid}")
    return report
