"""The any-time evaluation: a judge (metric classifiers and the real test split's statistics), the
quality, seconds and GFLOPs of one loop policy, and the report over loop counts."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..choices import VIDEO_DATASETS
from ..config import Config
from ..core.loops import AdaptiveLoops, check_sampling_loops
from ..data import ImageData, load_data
from ..metrics.frechet import feature_stats, frechet_distance
from ..metrics.video import frame_views
from ..utils.arrays import to_float, to_uint8
from ..utils.progress import bar
from .build import load_split
from .cache import get_classifier, get_video_classifier
from .lock import run_writer
from .reports import write_report
from .run import Run
from .sampling import balanced_labels, generate, gflops_per_sample, sampling_settings

log = logging.getLogger("elt")


# Moving Fashion-MNIST's frames are judged by the Fashion-MNIST classifier on the garment crop.
GARMENT_CROP = 28


def frame_judge_data(cfg: Config, data: ImageData) -> tuple[str, ImageData, int | None]:
    """The image classifier for a video data set's frames: (its data set name, its training images,
    the crop size). Moving Fashion-MNIST: the Fashion-MNIST classifier (the image demo's) on the
    garment crop; other videos: a classifier of the middle frames of the training clips."""
    if cfg.data.dataset == "mfmnist":  # the frames show garments whatever the clips' label
        return "fmnist", load_data("fmnist", "train", cfg.data.data_dir), GARMENT_CROP
    mid = data.images[:, data.images.shape[1] // 2]
    return cfg.data.dataset, ImageData(mid, data.labels, data.class_names), None


def metric_prefix(cfg: Config) -> str:
    """The metric extractor's name: data set + network (`fmnist_cnn`, `mfmnist_c3d`)."""
    return f"{cfg.data.dataset}_{'c3d' if cfg.data.dataset in VIDEO_DATASETS else 'cnn'}"


@dataclass
class Judge:
    """The metric classifier and the test split's feature statistics, built once per evaluation.
    Video adds the image classifier on frames (`frames`: classifier, reference statistics, metric
    name, crop size, whether the clips' labels are its classes)."""
    classifier: torch.nn.Module
    ref_stats: tuple
    prefix: str
    reference: dict
    frames: tuple | None = None

    def score(self, images: np.ndarray, labels: np.ndarray | None, fd: bool = True) -> dict:
        """acc_/fd_ of uint8 images or clips (accuracy only when labels are given; no fd_ with fd=False)."""
        video = images.ndim == 5
        feats, pred = self.classifier.features_and_predictions(images if video else to_float(images))
        out = {f"fd_{self.prefix}": frechet_distance(*feature_stats(feats), *self.ref_stats)} if fd else {}
        if labels is not None:
            out = {f"acc_{self.prefix}": float((pred == labels).mean()), **out}
        if self.frames is not None:
            clf, ref, name, crop, same_labels = self.frames
            f, p = clf.features_and_predictions(to_float(frame_views(images, crop)))
            if labels is not None and same_labels:
                out[f"acc_{name}"] = float((p == np.repeat(labels, images.shape[1])).mean())
            if fd:
                out[f"fd_{name}"] = frechet_distance(*feature_stats(f), *ref)
        return out


# Video references: the first clips of the test split (C3D statistics), and fewer for the frames
# and for the tokenizer's reconstruction (16 frames each).
REF_CLIPS, REF_FRAME_CLIPS, RECON_CLIPS = 5000, 1000, 500


def make_judge(run: Run, progress: bool = True) -> Judge:
    """Loads (or trains once, cached) the metric classifier(s); reference numbers of the real test
    split and of its tokenizer reconstruction."""
    c = run.cfg
    if c.data.dataset == "extracted":
        raise ValueError("a run trained from `elt extract` shards has no test images here; measure it with "
                         "`elt sample --folder` and `elt fid` (or FVD), see docs/reproduce.md")
    prefix = metric_prefix(c)
    test = load_split(c, "test")
    if test.is_video:
        train_data = load_split(c, "train")
        classifier = get_video_classifier(c, train_data, progress)
        frame_set, frame_data, crop = frame_judge_data(c, train_data)
        del train_data
        frame_clf = get_classifier(c, frame_data, progress)
        real = test.images[:REF_FRAME_CLIPS]
        ff, _ = frame_clf.features_and_predictions(to_float(frame_views(real, crop)))
        frames = (frame_clf, feature_stats(ff), f"{frame_set}_cnn_frames", crop, c.data.label == "class"
                  or c.data.dataset != "mfmnist")
        judge = Judge(classifier, feature_stats(classifier.features_and_predictions(test.images[:REF_CLIPS])[0]),
                      prefix, {}, frames)
        test = type(test)(test.images[:RECON_CLIPS], test.labels[:RECON_CLIPS], test.class_names)
    else:
        classifier = get_classifier(c, load_split(c, "train"), progress)
        judge = Judge(classifier, feature_stats(classifier.features_and_predictions(to_float(test.images))[0]),
                      prefix, {})
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


def measure(run: Run, judge: Judge, policy, labels: torch.Tensor, seed: int, steps: int, guidance: float,
            progress: bool = False) -> dict:
    """Quality (classifier accuracy against the labels, Fréchet distance to the test split), seconds
    and GFLOPs per sample of one loop policy: a loop count, a schedule or adaptive exit (whose
    GFLOPs and mean policy are what it ran)."""
    if isinstance(policy, AdaptiveLoops):
        policy.reset()
    tic = time.perf_counter()
    images = generate(run, policy, labels, seed, steps, guidance, progress)
    seconds = time.perf_counter() - tic
    out = {**judge.score(images, labels.numpy()),
           "seconds_per_sample": seconds / len(labels),
           "gflops_per_sample": gflops_per_sample(run, policy, steps, guidance)}
    if isinstance(policy, AdaptiveLoops):
        out["mean_loops"] = policy.mean_loops
    return out


def evaluate(run: Run, loops: list[int] | None = None, n: int | None = None, seed: int | None = None,
             steps: int | None = None, guidance: float | None = None, progress: bool = True) -> dict:
    """Sample n class-balanced images at each L; accuracy and Fréchet distance of the metric
    classifier, seconds and GFLOPs per sample. Writes anytime.json / anytime.png in the run."""
    c = run.cfg
    loops = loops or c.eval.loops or list(range(1, c.model.max_loops + 3))
    n, seed, steps, guidance = eval_settings(run, n, seed, steps, guidance)
    for L in loops:  # every loop count checked before any work
        check_sampling_loops(L, steps, c.model.max_loops)
    with run_writer(run.path, "elt evaluate"):
        judge = make_judge(run, progress)
        labels = balanced_labels(n, run.num_classes)
        per_loop = {}
        for L in bar(loops, desc="evaluate loops", progress=progress):
            per_loop[str(L)] = measure(run, judge, L, labels, seed, steps, guidance, progress)
            log.info("L=%d %s", L, per_loop[str(L)])
        report = new_report(run, judge, n, seed, steps, guidance, per_loop)
        write_report(report, run.path)
    return report


def new_report(run: Run, judge: Judge, n: int, seed: int, steps: int, guidance: float, per_loop: dict) -> dict:
    """The any-time report: what was sampled how (run, checkpoint, sampling settings), the metric's
    reference numbers, and the constant-L table `per_loop`."""
    c = run.cfg
    return {"run": str(run.path), "config": c.name, "framework": c.framework, "objective": c.objective_label(),
            "ilsd": dataclasses.asdict(c.ilsd),
            "checkpoint_step": run.step, "lmin": c.model.min_loops, "lmax": c.model.max_loops,
            "metric_extractor": judge.prefix, "reference": judge.reference,
            "sampling": {**sampling_settings(run, steps, guidance), "seed": seed, "n": n},
            "loops": per_loop}


def eval_settings(run: Run, n: int | None, seed: int | None, steps: int | None, guidance: float | None):
    """The evaluation's n, seed, sampling steps and guidance: the arguments, else the run's config."""
    c = run.cfg
    if n is not None and n < 2:
        raise ValueError(f"--n must be >= 2 (a Fréchet distance needs a covariance), got {n}")
    return (n or c.eval.n, c.eval.seed if seed is None else seed, steps or c.sample.steps,
            c.sample.guidance if guidance is None else guidance)
