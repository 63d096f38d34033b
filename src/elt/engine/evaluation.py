"""The any-time evaluation and its report: a judge (the metric classifiers and the real test split's
statistics), the quality, seconds and GFLOPs of a loop policy, the table over loop counts, and what it
writes — `RUN/anytime.json` and `.png`, a copy of both named after the sampling settings under `RUN/eval/`,
and the any-time grid. Every file goes through the atomic writer, and only rank 0 writes under torchrun.

A report merges with the one already there when both were measured with the same sampling settings at the
same checkpoint (`same_measurement`): the constant-L table and the schedule search (`elt evaluate` and
`elt schedules`) keep each other's results.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.loops import AdaptiveLoops, check_sampling_loops
from ..metrics.anytime import plot_report
from ..metrics.frechet import feature_stats, frechet_distance
from ..metrics.video import border_frames, frame_views
from ..utils.arrays import to_float, to_uint8
from ..utils.atomic import write_bytes, write_json
from ..utils.progress import bar
from .devices import rank_world
from .media import Labels, save_grid, save_video_grid
from .prepare import Classifiers, Split, metric_classifiers
from .run import REPORT, Run, read_report, run_writer
from .sampling import balanced_labels, generate, gflops_per_sample, guided_loops

log = logging.getLogger("elt")


def metric_prefix(cfg) -> str:
    """The metric extractor's name: data set + network (`fmnist_cnn`, `mfmnist_c3d`)."""
    return f"{cfg.data.dataset}_{'c3d' if cfg.data.dataset in ('mfmnist', 'ucf101') else 'cnn'}"


# ---------------------------------------------------------------------------------- the judge


@dataclass
class Judge:
    """The metric classifiers and the test split's feature statistics, built once per evaluation. Video
    adds the image classifier on frames (its reference statistics and metric name)."""
    classifiers: Classifiers
    ref_stats: tuple
    prefix: str
    reference: dict
    sizes: dict                      # how many real test examples each reference number comes from
    frame_stats: tuple | None = None
    frame_name: str | None = None

    def score(self, images: np.ndarray, labels: np.ndarray | None, fd: bool = True) -> dict:
        """acc_/fd_ of uint8 images or clips (accuracy only when labels are given; no fd_ with fd=False)."""
        c = self.classifiers
        video = images.ndim == 5
        feats, pred = c.main.features_and_predictions(images if video else to_float(images))
        out = {f"fd_{self.prefix}": frechet_distance(*feature_stats(feats), *self.ref_stats)} if fd else {}
        if labels is not None:
            out = {f"acc_{self.prefix}": float((pred == labels).mean()), **out}
        if video:  # how often the object reaches the canvas border (real clips set the level)
            out["border_frames"] = border_frames(images)
        if c.frames is not None:
            f, p = c.frames.features_and_predictions(to_float(frame_views(images, c.crop)))
            if labels is not None and c.same_labels:
                out[f"acc_{self.frame_name}"] = float((p == np.repeat(labels, images.shape[1])).mean())
            if fd:
                out[f"fd_{self.frame_name}"] = frechet_distance(*feature_stats(f), *self.frame_stats)
        return out


# Video references: the first `eval.ref_clips` clips of the test split (C3D statistics), and at most these
# for the frames and for the tokenizer's reconstruction.
REF_FRAME_CLIPS, RECON_CLIPS = 1000, 500


def make_judge(run: Run, classifiers: Classifiers | None = None, progress: bool = True) -> Judge:
    """The judge of `run`'s samples: its metric classifiers (given, or found in the cache by the train
    split's identity — trained once when missing), reference numbers of the real test split (loaded once)
    and of its tokenizer reconstruction."""
    c = run.cfg
    if c.data.dataset == "extracted":
        raise ValueError("a run trained from `elt extract` shards has no test images here; measure it with "
                         "`elt sample --folder` and `elt fid` (or FVD), see docs/reproduce.md")
    classifiers = classifiers or metric_classifiers(c, Split.of(c, "train"), progress)
    test = Split.of(c, "test").data
    prefix = metric_prefix(c)
    if test.is_video:
        clips = test.images[:c.eval.ref_clips]
        sizes = {"stats": len(clips), "frame_stats": min(len(clips), REF_FRAME_CLIPS),
                 "scores": min(len(clips), RECON_CLIPS)}
        real = clips[:sizes["frame_stats"]]
        ff, _ = classifiers.frames.features_and_predictions(to_float(frame_views(real, classifiers.crop)))
        judge = Judge(classifiers, feature_stats(classifiers.main.features_and_predictions(clips)[0]),
                      prefix, {}, sizes, feature_stats(ff), f"{classifiers.frame_set}_cnn_frames")
        n = sizes["scores"]
        test = type(test)(test.images[:n], test.labels[:n], test.class_names)
    else:
        judge = Judge(classifiers, feature_stats(classifiers.main.features_and_predictions(to_float(test.images))[0]),
                      prefix, {}, {"stats": len(test), "scores": len(test)})
    test_x = to_float(test.images)
    recon = torch.cat([run.tokenizer.decode(run.tokenizer.encode(test_x[i: i + 256].to(run.device))).cpu()
                       for i in range(0, len(test_x), 256)])
    real_scores = judge.score(test.images, test.labels, fd=False)  # accuracies of the real test split
    warn_near_chance(real_scores, run.num_classes, c.eval.classifier_epochs)
    recon_scores = judge.score(to_uint8(recon), test.labels)
    judge.reference = {**{f"{k}_real_test": v for k, v in real_scores.items()},
                       **{f"{k}_tokenizer_recon": v for k, v in recon_scores.items()},
                       "tokenizer_recon_mse": float((recon - test_x).pow(2).mean())}
    return judge


def warn_near_chance(real_scores: dict, num_classes: int, epochs: float) -> list[str]:
    """A metric classifier near chance on real test data makes its Fréchet distances meaningless (its
    features barely vary: FD near 0 for any samples). Warns, and returns the names of such metrics."""
    chance = 1 / max(num_classes, 1)
    weak = [k for k, v in real_scores.items() if k.startswith("acc_") and v < 2 * chance]
    for k in weak:
        log.warning("the metric classifier behind %s is near chance on the real test data (%.3f, chance %.3f): "
                    "its accuracies and Fréchet distances say little; train it longer (eval.classifier_epochs, "
                    "now %g)", k, real_scores[k], chance, epochs)
    return weak


# ---------------------------------------------------------------------------------- measuring


def measure(run: Run, judge: Judge, policy, labels: torch.Tensor, seed: int, progress: bool = False) -> dict:
    """Quality (classifier accuracy against the labels, Fréchet distance to the test split), seconds
    and GFLOPs per sample of one loop policy: a loop count, a schedule or adaptive halting (whose
    GFLOPs and mean loops are what it ran)."""
    if isinstance(policy, AdaptiveLoops):
        policy.reset()
    tic = time.perf_counter()
    images = generate(run, policy, labels, seed, progress)
    seconds = time.perf_counter() - tic
    out = {**judge.score(images, labels.numpy()),
           "seconds_per_sample": seconds / len(labels),
           "gflops_per_sample": gflops_per_sample(run, policy)}
    if isinstance(policy, AdaptiveLoops):
        out["mean_loops"] = policy.mean_loops
    return out


def eval_n_seed(run: Run, n: int | None, seed: int | None) -> tuple[int, int]:
    """The evaluation's sample count and seed: the arguments, else the run's config."""
    if n is not None and n < 2:
        raise ValueError(f"--n must be >= 2 (a Fréchet distance needs a covariance), got {n}")
    return n or run.cfg.eval.n, run.cfg.eval.seed if seed is None else seed


def evaluate(run: Run, loops: list[int] | None = None, n: int | None = None, seed: int | None = None,
             classifiers: Classifiers | None = None, progress: bool = True) -> dict:
    """Sample n class-balanced images at each L; accuracy and Fréchet distance of the metric
    classifier, seconds and GFLOPs per sample. Writes anytime.json / anytime.png in the run."""
    c = run.cfg
    loops = loops or c.eval.loops or list(range(1, c.model.max_loops + 3))
    n, seed = eval_n_seed(run, n, seed)
    for L in loops:  # every loop count checked before any work
        check_sampling_loops(L, run.sampler.steps, c.model.max_loops, guided_loops(run))
    with run_writer(run.path, "elt evaluate"):
        judge = make_judge(run, classifiers, progress)
        labels = balanced_labels(n, run.num_classes)
        per_loop = {}
        for L in bar(loops, desc="evaluate loops", progress=progress):
            per_loop[str(L)] = measure(run, judge, L, labels, seed, progress)
            log.info("L=%d %s", L, per_loop[str(L)])
        report = write_report(new_report(run, judge, n, seed, per_loop), run.path)
    return report


# ---------------------------------------------------------------------------------- the report


def new_report(run: Run, judge: Judge, n: int, seed: int, per_loop: dict) -> dict:
    """The any-time report: what was sampled how (run, checkpoint, sampling settings, their tag), the
    metric's reference numbers, and the constant-L table `per_loop`."""
    c = run.cfg
    return {"run": str(run.path), "config": c.name, "framework": c.framework, "objective": c.objective_label(),
            "ilsd": dataclasses.asdict(c.ilsd),
            "checkpoint_step": run.step, "lmin": c.model.min_loops, "lmax": c.model.max_loops,
            "metric_extractor": judge.prefix, "reference": judge.reference, "reference_sizes": judge.sizes,
            "sampling": {**run.settings(), "seed": seed, "n": n}, "tag": run.tag(seed, n),
            "loops": per_loop}


def same_measurement(a: dict, b: dict) -> bool:
    """Whether two reports were measured with the same sampling settings at the same checkpoint."""
    return a.get("sampling") == b.get("sampling") and a.get("checkpoint_step") == b.get("checkpoint_step")


def existing_report(run_dir: Path, report: dict) -> dict | None:
    """What the run already measured like `report`: its own copy under eval/ (named after those settings),
    else anytime.json when it holds the same measurement; None when neither does."""
    for path in (Path(run_dir) / "eval" / f"{report['tag']}.json", Path(run_dir) / REPORT):
        try:
            old = read_report(path)
        except (OSError, ValueError):
            continue
        if same_measurement(old, report):
            return old
    return None


def write_report(report: dict, run_dir: Path) -> dict:
    """anytime.json/.png in the run folder and eval/<tag>.json/.png, merged with what the run measured before
    with the same settings (its eval/ copy, which another setting's evaluation never replaces) and `report`
    lacks: loop counts it did not measure, the schedule search. Returns the merged report."""
    run_dir = Path(run_dir)
    old = existing_report(run_dir, report)
    if old is not None:
        loops = {**old.get("loops", {}), **report.get("loops", {})}
        report = {**report, "loops": {k: loops[k] for k in sorted(loops, key=int)}}
        if "schedules" not in report and "schedules" in old:
            report["schedules"] = old["schedules"]
    if rank_world()[0] != 0:
        return report
    (run_dir / "eval").mkdir(exist_ok=True)
    png = plot_report(report)
    for base in (run_dir / "anytime", run_dir / "eval" / report["tag"]):  # a tag holds dots: no with_suffix
        write_json(base.parent / f"{base.name}.json", report)
        write_bytes(base.parent / f"{base.name}.png", png)
    return report


def anytime_grid(run: Run, loops: list[int], seed: int, path: Path) -> Path:
    """One row per L (labelled with its GFLOPs per sample), one column per class (labelled with its name),
    the same seed in every row, the sampling settings in a caption: a PNG (images) or an animated GIF
    (and MP4 where PyAV is installed) for video. Returns the grid's path."""
    labels = torch.arange(run.num_classes)
    rows = np.concatenate([generate(run, L, labels, seed) for L in loops])
    s = run.sample
    captions = Labels(
        rows=[f"L={L} · {gflops_per_sample(run, L):.3g} GFLOPs" for L in loops],
        cols=list(run.class_names),
        caption=f"{run.cfg.name} ({run.cfg.objective_label()}), checkpoint step {run.step}: rows L = loops per "
                f"sampling step, columns classes; {s.steps} steps, guidance {s.guidance:g}, seed {seed} "
                f"in every row, {'EMA' if run.ema else 'raw'} weights"
                + (f", motion token {s.motion_order}" if "motion_order" in run.sampler.settings() else ""))
    if rows.ndim == 5:
        path = path.with_suffix(".gif")
        save_video_grid(rows, len(loops), run.num_classes, path, scale=2 if rows.shape[2] <= 64 else 1, labels=captions)
    else:
        save_grid(rows, len(loops), run.num_classes, path, scale=3 if rows.shape[1] <= 32 else 1, labels=captions)
    return path
