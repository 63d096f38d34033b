"""Sampling a trained run: the loop policy (a loop count, a per-step schedule, adaptive halting, or the best
measured policy within a GFLOPs or latency budget), class-balanced labels, images or clips as uint8 arrays
(split across torchrun ranks and gathered back in label order), and what `elt sample` writes — a file
with its grid, or a large resumable sample folder for FID/FVD.

Every sampling setting comes from the run (`Run.sample`, resolved once when it was loaded); the
functions here take the run, a policy, labels and a seed, nothing more.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..core.loops import AdaptiveLoops, as_policy, check_sampling_loops
from ..utils.arrays import to_uint8
from ..utils.atomic import write_json
from ..utils.progress import bar
from .checkpoint import claim_manifest, save_arrays
from .devices import autocast, rank_world
from .media import export_adm_npz, export_stylegan_v, save_samples
from .run import FRONTIER, LATENCY, REPORT, Run, read_report

log = logging.getLogger("elt")


# ---------------------------------------------------------------------------------- generation


def balanced_labels(n: int, num_classes: int, classes: list[int] | None = None) -> torch.Tensor:
    """n labels cycling through `classes` (default: all), so every class gets n/len(classes)."""
    pool = list(range(num_classes)) if classes is None else list(classes)
    bad = [c for c in pool if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"class ids {bad} are outside 0..{num_classes - 1}; this model has {num_classes} classes")
    if not pool:
        raise ValueError("the class list is empty; give at least one class id")
    return torch.tensor([pool[i % len(pool)] for i in range(n)], dtype=torch.long)


@torch.no_grad()
def generate(run: Run, policy, labels: torch.Tensor, seed: int = 0, progress: bool = False) -> np.ndarray:
    """Images uint8 (N, H, W, C) or clips (N, T, H, W, C) for `labels`; same seed (and process count)
    → same images.

    Under torchrun every rank samples every world_size-th label (seeded seed + rank) and the images
    are gathered back into label order on every rank."""
    rank, world = rank_world()
    gen = torch.Generator().manual_seed(seed + rank)
    out = sample_local(run, policy, labels[rank::world], gen, progress and rank == 0)
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
def sample_local(run: Run, policy, labels: torch.Tensor, gen: torch.Generator, progress: bool = False) -> np.ndarray:
    """This process's samples for `labels`, in batches of sample.batch_size, drawing from `gen`."""
    policy = as_policy(policy)
    check_sampling_loops(policy, run.sampler.steps, run.cfg.model.max_loops, guided_loops(run))
    out, bs, device = [], run.sample.batch_size, run.device
    tic = time.perf_counter()
    for i in bar(range(0, len(labels), bs), desc=f"sample {policy}", progress=progress, leave=False):
        with autocast(run.sample.precision, device):  # the network only; the sampler's maths stays fp32
            ids = run.sampler(run.model, labels[i: i + bs].to(device), policy, gen)
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


def guided_loops(run: Run) -> int | None:
    """The unconditional half's loop count when guidance runs it at its own (`--guidance-loops`), else None."""
    return run.sampler.guidance_loops if run.sampler.guided else None


def gflops_per_sample(run: Run, policy) -> float:
    """Network GFLOPs of sampling one example (guidance doubles the batch); tokenizer decode excluded."""
    return run.sampler.flops(run.model, policy) / 1e9


# ---------------------------------------------------------------------------------- the loop policy


AXES = ("steps", "sampler", "guidance_loops")  # what a frontier point may set besides its loop policy


def _apart(settings: dict) -> dict:
    """A run's sampling settings without the frontier's axes (what must match for a measurement to count)."""
    return {k: v for k, v in settings.items() if k not in AXES}


def measured_policies(run: Run) -> list[dict]:
    """Every measured way to sample this run that fits its settings, as {name, spec, kind, gflops_per_sample,
    quality, sample}: the constant L and schedules of RUN/anytime.json (measured at exactly these settings;
    `sample` = {}), and the points of `elt schedules`' frontier (RUN/frontier.json: measured at these settings
    but for steps, the solver and the guidance loops, which `sample` then sets). Adaptive points are left out
    (their compute varies)."""
    out, said = [], []
    path = run.path / REPORT
    if path.is_file():
        report = read_report(path)
        measured, now = report["sampling"], run.sampler.settings()
        differ = {k: (measured[k], v) for k, v in now.items() if k in measured and measured[k] != v}
        if differ:
            said.append(f"{path} was measured with " + ", ".join(f"{k}={a} (now {b})" for k, (a, b) in differ.items()))
        else:
            fd = f"fd_{report['metric_extractor']}"
            out = [{"name": f"L{L}", "spec": str(L), "kind": "constant", "gflops_per_sample": r["gflops_per_sample"],
                    "quality": r[fd], "sample": {}} for L, r in report.get("loops", {}).items()]
            for p in report.get("schedules", {}).get("points", []):
                if p["kind"] == "schedule" or (p["kind"] == "constant" and not any(o["name"] == p["name"] for o in out)):
                    out.append({"name": p["name"], "spec": p.get("spec", p["name"][1:]), "kind": p["kind"],
                                "gflops_per_sample": p["gflops_per_sample"], "quality": p[fd], "sample": {}})
    path = run.path / FRONTIER
    if path.is_file():
        frontier = json.loads(path.read_text())
        if _apart(frontier["base"]) != _apart(run.settings()):
            said.append(f"{path} was measured with other settings ({_apart(frontier['base'])})")
        else:
            out += [{k: p[k] for k in ("name", "spec", "kind", "gflops_per_sample", "quality", "sample")}
                    for p in frontier["points"]]
    if not out:
        raise (ValueError if said else FileNotFoundError)(
            ("; ".join(said) + ": sample with those settings, or measure these") if said else
            f"{run.path} has no measurements to choose from: run `elt evaluate --run {run.path}` (and `elt schedules "
            f"--run {run.path}` for the frontier of loops, steps and guidance) first, then sample within a budget")
    return out


def _machine_key(run: Run, batch: int) -> str:
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else f"{threads} threads"
    return (f"{platform.node()}|{platform.processor() or platform.machine()}|torch {torch.__version__}|"
            f"{where}|batch {batch}|{run.tag(seed=0)}")


def latencies(run: Run, specs: list[str], progress: bool = True, batch: int | None = None,
              again: tuple[str, ...] = ()) -> dict[str, float]:
    """Milliseconds per sample of each policy (a `LoopSchedule` spec) at the run's sampling batch (or
    `batch`), measured once on this machine and cached in RUN/latency.json (keyed by machine, threads,
    batch, sampling settings and checkpoint); the specs in `again` are measured anew."""
    batch = batch or run.sample.batch_size
    path = run.path / LATENCY
    cache = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except ValueError:
            log.warning("%s is unreadable; measuring the latencies again", path)
    table = cache.setdefault(_machine_key(run, batch), {})
    missing = [s for s in specs if s not in table or s in again]
    labels = balanced_labels(batch, run.num_classes)
    if missing:
        generate(run, 1, labels[:2], 0)  # warm-up
    for spec in bar(missing, desc="latency", progress=progress):
        tic = time.perf_counter()
        generate(run, spec, labels, 0)
        table[spec] = 1000 * (time.perf_counter() - tic) / batch
    if missing:
        write_json(path, cache)
    return {s: table[s] for s in specs}


def pick_for_budget(run: Run, gflops: float | None = None, ms: float | None = None, progress: bool = True) -> dict:
    """The measured way to sample with the best Fréchet distance whose GFLOPs (or measured ms per sample) fit
    the budget; raises naming the cheapest one when none fits."""
    if (gflops is None) == (ms is None):
        raise ValueError("give exactly one budget: --budget-gflops or --budget-ms")
    candidates = measured_policies(run)
    if ms is not None:
        by_settings: dict[str, list[dict]] = {}
        for p in candidates:
            by_settings.setdefault(json.dumps(p["sample"], sort_keys=True), []).append(p)
        for key, group in by_settings.items():
            view = run.with_sample(**json.loads(key)) if json.loads(key) else run
            lat = latencies(view, [p["spec"] for p in group], progress)
            for p in group:
                p["ms_per_sample"] = lat[p["spec"]]
    cost, budget, unit = ("gflops_per_sample", gflops, "GFLOPs") if gflops is not None else ("ms_per_sample", ms, "ms")
    fitting = [p for p in candidates if p[cost] <= budget]
    if not fitting:
        cheapest = min(candidates, key=lambda p: p[cost])
        raise ValueError(f"no measured way to sample fits {budget:g} {unit} per sample; the cheapest, "
                         f"{cheapest['name']}, needs {cheapest[cost]:.4g}: raise the budget")
    return min(fitting, key=lambda p: p["quality"])


def choose_policy(run: Run, loops=None, adaptive: float | None = None, budget_gflops: float | None = None,
                  budget_ms: float | None = None, progress: bool = True) -> tuple[Run, object, dict]:
    """(the run with the settings chosen, the loop policy, how it was chosen) from exactly one of: `loops` (a
    loop count, a schedule or its spec), an adaptive-halting threshold, a GFLOPs or a latency budget (the best
    measured policy that fits it, with the steps, solver and guidance loops it was measured at)."""
    m = run.cfg.model
    if loops is not None:
        policy = as_policy(loops)
        return run, policy, {"loops": loops if isinstance(loops, int) else policy.spec()}
    if adaptive is not None:
        policy = AdaptiveLoops(adaptive, m.min_loops, m.max_loops)
        return run, policy, {"loops": repr(policy)}
    best = pick_for_budget(run, budget_gflops, budget_ms, progress=progress)
    budget = {"budget_gflops": budget_gflops} if budget_gflops is not None else {"budget_ms": budget_ms}
    chosen = {k: best[k] for k in ("name", "gflops_per_sample", "ms_per_sample") if k in best}
    log.info("budget %s: using %s (%s)", budget, best["name"], chosen)
    view = run.with_sample(**best["sample"]) if best["sample"] else run
    return view, as_policy(best["spec"]), {"loops": best["spec"], **budget, "chosen": chosen}


# ---------------------------------------------------------------------------------- what `elt sample` writes


def recorded_settings(of: Run, how: dict, seed: int, **more) -> dict:
    """What a sample file or folder records of how it was made: how the policy was chosen, every sampling
    setting of the run, the seed and the checkpoint step (and `more`)."""
    return {**how, **of.settings(), "seed": seed, "checkpoint_step": of.step, **more}


def write_samples(run: Run, policy, how: dict, n: int, seed: int, classes: list[int] | None = None,
                  out: Path | None = None, folder: Path | None = None, shard_size: int = 1000,
                  export_frames: str | None = None, progress: bool = True) -> tuple[list[Path], dict]:
    """`elt sample`'s work once its input is checked: n class-balanced samples (cycling through `classes`)
    as OUT.npz (images, labels, settings) with a captioned grid — OUT.png, or OUT.gif (+ .mp4) for clips —
    or as a resumable sample folder under FOLDER; StyleGAN-V's frame folders too when asked. Returns (the
    files written, the settings recorded); under torchrun every rank samples and rank 0 writes."""
    if folder is not None:
        made = sample_folder(run, policy, how, folder, n, seed, shard_size, classes, progress)
        written = [made]
        if export_frames and rank_world()[0] == 0:
            with np.load(made / "samples.npz") as z:
                written.append(export_stylegan_v(z["images"], export_frames))
        return written, json.loads((made / "manifest.json").read_text())["settings"]
    labels = balanced_labels(n, run.num_classes, classes)
    images = generate(run, policy, labels, seed, progress=progress)
    if hasattr(policy, "mean_loops"):
        how = {**how, "mean_loops": round(policy.mean_loops, 4)}
    settings = recorded_settings(run, how, seed)
    if rank_world()[0] != 0:
        return [], settings
    columns = run.num_classes if classes is None else len(classes)
    written = save_samples(out, images, labels.numpy(), settings, run.class_names, columns,
                           title=f"{run.cfg.name} ({run.path.name}), checkpoint step {run.step}")
    if export_frames:
        written.append(export_stylegan_v(images, export_frames))
    return written, settings


def folder_name(run: Run, how: dict, seed: int, n: int) -> str:
    """`<run>_<settings tag>_w<weights digest>`: the run's folder name, every setting of the samples, and which
    weights made them (two runs of one name never share a folder)."""
    return f"{run.path.name}_{run.tag(seed, n, how['loops'])}_w{run.weights_digest[:8]}"


def _shard_ok(path: Path, n: int) -> bool:
    try:
        with np.load(path) as z:
            return len(z["images"]) == n and len(z["labels"]) == n
    except Exception:  # a damaged shard is sampled again
        return False


def sample_folder(run: Run, policy, how: dict, out_root: str | Path, n: int, seed: int = 0, shard_size: int = 1000,
                  classes: list[int] | None = None, progress: bool = True) -> Path:
    """Large class-balanced sample sets for FID/FVD (50 per class for ImageNet's 50k), across ranks and
    resumable: `elt sample --folder ROOT` writes (or completes) ROOT/<run>_<settings>/ and returns it.

    The set is cut into shards of `shard_size` samples. Shard i holds labels [i·s, (i+1)·s) of the balanced
    label list and draws from its own generator, seeded (seed, i), so its samples depend neither on how many
    processes run nor on which one takes it. Ranks take shards round-robin; each shard is written atomically
    (`shard_00012.npz`), so an interrupted job resumes with the missing shards only. `manifest.json` holds
    every setting. When all shards exist, rank 0 joins them into `samples.npz` (`images`, `labels`) and,
    for images, the ADM evaluator's `samples_adm.npz` (`arr_0`, `arr_1`)."""
    rank, world = rank_world()
    settings = recorded_settings(run, how, seed, n=n, shard_size=shard_size, classes=classes,
                                 run=str(run.path.absolute()), weights_digest=run.weights_digest)
    folder = Path(out_root) / folder_name(run, how, seed, n)
    manifest = folder / "manifest.json"
    labels = balanced_labels(n, run.num_classes, classes)
    shards = [(i, labels[i * shard_size: (i + 1) * shard_size]) for i in range((n + shard_size - 1) // shard_size)]
    meta = {"run": str(run.path), "settings": settings, "num_shards": len(shards),
            "class_names": run.class_names, "per_class": {c: int((labels == c).sum()) for c in labels.unique().tolist()}}
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        claim_manifest(manifest, meta, lambda old, new: old.get("settings") == new["settings"],
                       f"{folder} holds samples made with other settings or by another run (its manifest.json says "
                       f"which); choose another --folder (or move that one aside)")
    if world > 1:
        dist.barrier()
    mine = [(i, lab) for i, lab in shards[rank::world] if not _shard_ok(folder / f"shard_{i:05d}.npz", len(lab))]
    done = len(shards[rank::world]) - len(mine)
    if done and rank == 0:
        log.info("resuming %s: %d shards already there", folder, done)
    for i, lab in bar(mine, desc="shards", progress=progress and rank == 0):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        images = sample_local(run, policy, lab, gen)
        save_arrays(folder / f"shard_{i:05d}.npz", images=images, labels=lab.numpy().astype(np.int64))
    if world > 1:
        dist.barrier()
    if rank == 0:
        _join(folder, len(shards))
    return folder


def _join(folder: Path, num_shards: int) -> None:
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
