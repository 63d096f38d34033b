"""Loading a trained run, class-balanced sampling, and the any-time evaluation over loop counts."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..config import Config, apply_overrides, load_config
from ..loops import AdaptiveLoops, as_policy, check_sampling_loops
from ..metrics.anytime import write_report
from ..metrics.frechet import feature_stats, frechet_distance
from ..metrics.video import frame_views
from ..tokenizers.vqvae import to_float
from . import precision
from .distributed import rank_world
from .assets import (build_model, build_sampler, frame_judge_data, get_classifier, get_video_classifier, is_learned,
                     load_data_spec, load_split, load_weights, make_tokenizer, metric_prefix)
from .checkpoint import DAMAGED, find_checkpoint, read_state

log = logging.getLogger("elt")


@dataclass
class Run:
    path: Path
    cfg: Config
    model: torch.nn.Module
    tokenizer: torch.nn.Module
    step: int
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(path: str | Path, use_ema: bool | None = None, device: torch.device | str = "cpu",
             sample_overrides: list[str] | None = None) -> Run:
    """The run's network (EMA weights unless `use_ema=False` or the config says so) and tokenizer, both
    on `device`, from its last checkpoint; `sample_overrides` ("sample.key=value") change how it samples."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml); pass the --out folder of `elt train`")
    cfg = load_config(str(path / "config.yaml"))
    for item in sample_overrides or []:
        if not item.strip().startswith("sample."):
            raise ValueError(f"--set {item}: only sample.* settings can change after training "
                             "(e.g. --set sample.choice_temperature=2); the rest is fixed by the checkpoint")
    cfg = apply_overrides(cfg, sample_overrides or []).validate()
    ckpt = find_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"run folder {path} has no checkpoint yet; train it first (elt train --out {path})")
    spec = path / "data.json"  # example shape and class names (runs from before it read their data)
    data = load_data_spec(spec) if spec.is_file() else load_split(cfg, "test")
    tokenizer = make_tokenizer(cfg, data)
    if is_learned(tokenizer):
        load_weights(tokenizer, path / "tokenizer.safetensors", "tokenizer",
                     "retrain the run, or copy tokenizer.safetensors from a run of the same config")
    tokenizer.eval()
    model = build_model(cfg, tokenizer, data.num_classes)
    use_ema = cfg.sample.use_ema if use_ema is None else use_ema
    weights = "ema.safetensors" if use_ema and (ckpt / "ema.safetensors").is_file() else "model.safetensors"
    cfg.sample.use_ema = weights == "ema.safetensors"  # what the reports say is what was loaded
    load_weights(model, ckpt / weights, "checkpoint", DAMAGED)
    step = int(read_state(ckpt)["step"])
    return Run(path, cfg, model.eval().to(device), tokenizer.to(device), step, data.class_names)


def balanced_labels(n: int, num_classes: int, classes: list[int] | None = None) -> torch.Tensor:
    """n labels cycling through `classes` (default: all), so every class gets n/len(classes)."""
    pool = list(range(num_classes)) if classes is None else list(classes)
    bad = [c for c in pool if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class ids {bad} are outside 0..{num_classes - 1}; this model has {num_classes} classes")
    if not pool:
        raise ValueError("the class list is empty; give at least one class id")
    return torch.tensor([pool[i % len(pool)] for i in range(n)], dtype=torch.long)


def sampler_for(run: Run, steps: int | None = None, cfg_scale: float | None = None):
    s = run.cfg.sample
    overrides = {k: v for k, v in (("steps", steps), ("cfg", cfg_scale)) if v is not None}
    return build_sampler(dataclasses.replace(run.cfg, sample=dataclasses.replace(s, **overrides)), run.tokenizer)


def sampling_settings(run: Run, steps: int | None = None, cfg_scale: float | None = None) -> dict:
    """Every setting that changes the samples, for reports and output names (the sampler's own, the
    precision the network ran in, EMA or raw weights, the kind of device)."""
    return {**sampler_for(run, steps, cfg_scale).settings(),
            "precision": precision.resolve(run.cfg.sample.precision, run.device),
            "ema": run.cfg.sample.use_ema, "device": run.device.type}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [0, 1] → uint8 (B, H, W, C); clips (B, C, T, H, W) → (B, T, H, W, C)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).cpu().numpy()


@torch.no_grad()
def generate(run: Run, loops, labels: torch.Tensor, seed: int = 0, steps: int | None = None,
             cfg_scale: float | None = None, progress: bool = False) -> np.ndarray:
    """Images uint8 (N, H, W, C) or clips (N, T, H, W, C) for `labels`; same seed (and process count)
    → same images.

    Under torchrun every rank samples every world_size-th label (seeded seed + rank) and the images
    are gathered back into label order on every rank."""
    rank, world = rank_world()
    gen = torch.Generator().manual_seed(seed + rank)
    out = sample_local(run, loops, labels[rank::world], gen, steps, cfg_scale, progress and rank == 0)
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
def sample_local(run: Run, loops, labels: torch.Tensor, gen: torch.Generator, steps: int | None = None,
                 cfg_scale: float | None = None, progress: bool = False) -> np.ndarray:
    """This process's samples for `labels`, in batches of sample.batch_size, drawing from `gen`."""
    sampler = sampler_for(run, steps, cfg_scale)
    schedule = as_policy(loops)
    check_sampling_loops(schedule, sampler.steps, run.cfg.model.max_loops)
    out = []
    bs = run.cfg.sample.batch_size
    device = run.device
    for i in tqdm(range(0, len(labels), bs), desc=f"sample {schedule}", disable=not progress, leave=False):
        with precision.autocast(run.cfg.sample.precision, device):  # the network only; the sampler's maths stays fp32
            ids = sampler(run.model, labels[i: i + bs].to(device), schedule, gen)
        out.append(to_uint8(run.tokenizer.decode(ids)))
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)  # no labels: an empty array


def gflops_per_sample(run: Run, loops, steps: int, cfg_scale: float) -> float:
    """Network GFLOPs of sampling one example (guidance doubles the batch); tokenizer decode excluded."""
    return sampler_for(run, steps, cfg_scale).flops(run.model, loops) / 1e9


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


def measure(run: Run, judge: Judge, loops, labels: torch.Tensor, seed: int, steps: int, cfg_scale: float,
            progress: bool = False) -> dict:
    """Quality (classifier accuracy against the labels, Fréchet distance to the test split), seconds
    and GFLOPs per sample of one loop policy: a loop count, a schedule or adaptive exit (whose
    GFLOPs and mean loops are what it ran)."""
    if isinstance(loops, AdaptiveLoops):
        loops.reset()
    tic = time.perf_counter()
    images = generate(run, loops, labels, seed, steps, cfg_scale, progress)
    seconds = time.perf_counter() - tic
    out = {**judge.score(images, labels.numpy()),
           "seconds_per_sample": seconds / len(labels),
           "gflops_per_sample": gflops_per_sample(run, loops, steps, cfg_scale)}
    if isinstance(loops, AdaptiveLoops):
        out["mean_loops"] = loops.mean_loops
    return out


def evaluate(run: Run, loops: list[int] | None = None, n: int | None = None, seed: int | None = None,
             steps: int | None = None, cfg_scale: float | None = None, progress: bool = True) -> dict:
    """Sample n class-balanced images at each L; accuracy and Fréchet distance of the metric
    classifier, seconds and GFLOPs per sample. Writes anytime.json / anytime.png in the run."""
    c = run.cfg
    loops = loops or c.eval.loops or list(range(1, c.model.max_loops + 3))
    n, seed, steps, cfg_scale = eval_settings(run, n, seed, steps, cfg_scale)
    for L in loops:  # every loop count checked before any work
        check_sampling_loops(L, steps, c.model.max_loops)
    judge = make_judge(run, progress)
    labels = balanced_labels(n, run.num_classes)
    per_loop = {}
    for L in tqdm(loops, desc="evaluate loops", disable=not progress):
        per_loop[str(L)] = measure(run, judge, L, labels, seed, steps, cfg_scale, progress)
        log.info("L=%d %s", L, per_loop[str(L)])
    report = new_report(run, judge, n, seed, steps, cfg_scale, per_loop)
    save_report(report, run)
    return report


def new_report(run: Run, judge: Judge, n: int, seed: int, steps: int, cfg_scale: float, per_loop: dict) -> dict:
    """The any-time report: what was sampled how (run, checkpoint, sampling settings), the metric's
    reference numbers, and the constant-L table `per_loop`."""
    c = run.cfg
    return {"run": str(run.path), "config": c.name, "objective": c.train.objective,
            "checkpoint_step": run.step, "lmin": c.model.min_loops, "lmax": c.model.max_loops,
            "metric_extractor": judge.prefix, "reference": judge.reference,
            "sampling": {**sampling_settings(run, steps, cfg_scale), "seed": seed, "n": n},
            "loops": per_loop}


def save_report(report: dict, run: Run) -> None:
    """anytime.json/.png in the run folder, written by one process under torchrun."""
    if rank_world()[0] == 0:
        write_report(report, run.path)


def eval_settings(run: Run, n: int | None, seed: int | None, steps: int | None, cfg_scale: float | None):
    """The evaluation's n, seed, sampling steps and guidance: the arguments, else the run's config."""
    c = run.cfg
    return (n or c.eval.n, c.eval.seed if seed is None else seed, steps or c.sample.steps,
            c.sample.cfg if cfg_scale is None else cfg_scale)
