"""`elt train`: one run folder per training run — resolved config, tokenizer, checkpoints, metrics log —
set up, then the loop around `step.train_step` (corrupt → one looped forward pass with an exit at Lint →
ILSD → backward → AdamW → EMA) with logging, checkpoints and exact resume."""
from __future__ import annotations

import copy
import json
import logging
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import Config, ConfigError, read_config
from ..data.extracted import Extracted
from ..utils.atomic import write_text
from ..utils.progress import bar
from . import precision
from .build import (build_framework, build_model, build_objective, check_fits, check_splits, extracted_tokenizer,
                    is_learned, load_split)
from .cache import encode_dataset, get_tokenizer
from .checkpoint import find_checkpoint, keep_copy, load_checkpoint, read_state, save_checkpoint
from .distributed import DistInfo, barrier, full_state
from .distributed import setup as dist_setup
from .distributed import teardown as dist_teardown
from .lock import LOCK_NAME, RunLock
from .run import save_data_spec
from .step import TrainState, lr_at, make_optimizer, train_step, wrap_model
from .store import save_weights

log = logging.getLogger("elt")


RUN_MARKERS = ("checkpoints", "data.json", LOCK_NAME)  # what a folder elt trains into holds from its start


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Checks before any work: `out` is a folder elt may write a run into (new, empty, or an elt run —
    with a checkpoint only under --resume), and writable. Creates it."""
    out = Path(out)
    if not str(out).strip():
        raise ValueError("--out is empty; give the run folder's path, e.g. --out runs/first")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder path")
    if not resume and find_checkpoint(out) is not None:
        raise ValueError(f"run folder {out} already holds a checkpoint; pass --resume to continue it "
                         f"or choose another --out")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in RUN_MARKERS):
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise ValueError(f"--out {out} holds files that are not an elt run ({held}, ...); choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to run folder {out} ({e.strerror}); choose a writable --out") from None


class MetricsLog:
    """metrics.jsonl in the run folder, mirrored to tensorboard (run/tensorboard) when it is installed."""

    def __init__(self, out: Path):
        self.file = (out / "metrics.jsonl").open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop records past the checkpoint (the steps are trained again) and a line a crash
    cut short, so metrics.jsonl reads as one uninterrupted run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    write_text(path, "".join(f"{line}\n" for line in kept))


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; the checkpoint of the last finished step was saved."""


@contextmanager
def stop_requests():
    """Turn SIGINT/SIGTERM into a flag checked between steps (restored afterwards)."""
    flag = {"signal": None}

    def handler(signum, frame):
        if flag["signal"] is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume_config(cfg: Config, out: Path) -> None:
    """A resumed run must keep its config; only train.steps may grow."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved, new = _flat(read_config(saved_path).to_dict()), _flat(cfg.to_dict())
    diff = [k for k in new if k != "train.steps" and new[k] != saved.get(k)]
    if diff:
        raise ConfigError(f"--resume with a config that differs from {saved_path} in {', '.join(diff)}; "
                          f"resume with --config {saved_path} (only --steps may change)")


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    out = Path(out)
    cfg.validate()
    info = dist_setup(cfg.train.device)
    finished = False
    lock = RunLock(out, "elt train")
    try:
        check_fits(cfg, info.device)
        check_splits(cfg)
        prepare_run_dir(out, resume)
        if info.is_main:  # one writer per run folder (rank 0 writes for every rank)
            lock.acquire()
        result = _train(cfg, out, resume, progress and info.is_main, info)
        finished = True
        return result
    finally:
        lock.release()
        dist_teardown(finished)


def _train(cfg: Config, out: Path, resume: bool, progress: bool, info: DistInfo) -> Path:
    t = cfg.train
    per_rank, rest = divmod(t.batch_size, info.world_size * t.grad_accum)
    if rest or per_rank < 1:
        raise ConfigError(f"bad config value train.batch_size: {t.batch_size} is not divisible by "
                          f"processes ({info.world_size}) x train.grad_accum ({t.grad_accum})")
    found = find_checkpoint(out) if resume else None
    if found is not None:
        check_resume_config(cfg, out)
        done = int(read_state(found)["step"])
        if t.steps <= done:
            raise ValueError(f"{out} is already trained to step {done}; --steps {t.steps} adds nothing (give more "
                             f"steps to continue it, or sample and evaluate it as it is)")
    if info.is_main and found is None:  # a resumed run's config.yaml changes with its next checkpoint
        if (out / "metrics.jsonl").is_file():  # a run killed before its first checkpoint
            log.info("%s has no checkpoint: training it from the start again", out)
            write_text(out / "metrics.jsonl", "")
        cfg.save(out / "config.yaml")
    torch.manual_seed(t.seed)  # same initial weights on every rank (FSDP2 does not broadcast them)
    gen = torch.Generator().manual_seed(t.seed)  # identical on every rank: the global batch

    if cfg.data.dataset == "extracted":  # pre-encoded by `elt extract`: memory-mapped shards
        examples = Extracted(cfg.data.data_dir)
        tokenizer, data, labels = extracted_tokenizer(cfg, examples), examples.as_data(), examples.labels
        log.info("data: %s, %d examples %s, %d classes", examples.folder, len(examples), tuple(examples.shape[1:]),
                 data.num_classes)
    else:
        data = load_split(cfg, "train")
        log.info("data: %s train, %d images %s, %d classes", cfg.data.dataset, len(data), data.images.shape[1:],
                 data.num_classes)
        bf16 = data.is_video and precision.resolve(cfg.tokenizer.precision, info.device) == "bf16"

        def tokenize(show: bool):  # token ids (masked) or latents (diffusion), on the run's device
            tok = get_tokenizer(cfg, data, seed=t.seed, progress=show, device=info.device)
            return tok, encode_dataset(tok, data, bf16, show, info.device)

        if info.is_main:  # rank 0 trains (or loads) the tokenizer and encodes first; the others read the cache
            tokenizer, examples = tokenize(progress)
        barrier(info)
        if not info.is_main:
            tokenizer, examples = tokenize(False)
        labels = torch.as_tensor(data.labels)
    if info.is_main:
        save_data_spec(data, out / "data.json")
        if is_learned(tokenizer):
            save_weights(tokenizer, out / "tokenizer.safetensors")

    model = build_model(cfg, tokenizer, data.num_classes).to(info.device)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if t.ema_decay > 0 else None
    if 0 < t.ema_decay < 1 and 1 / (1 - t.ema_decay) > max(t.steps - t.warmup_steps, 1) / 3:
        log.warning("train.ema_decay=%g averages the weights over ~%d steps, but this run trains %d after warm-up: "
                    "its EMA weights (what sample and evaluate use) will be mostly the early ones; lower "
                    "train.ema_decay (e.g. %g) or sample the raw weights (--set sample.use_ema=false)", t.ema_decay,
                    round(1 / (1 - t.ema_decay)), t.steps - t.warmup_steps,
                    round(1 - 3 / max(t.steps - t.warmup_steps, 3), 3))
    torch.manual_seed(t.seed + info.rank)  # per-rank dropout; data order comes from `gen`
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters, %dN x %dL, objective %s, %d process(es) on %s", cfg.name, n_params / 1e6,
             cfg.model.unique_layers, cfg.model.max_loops, cfg.objective_label(), info.world_size, info.device)
    fwd = wrap_model(model, cfg, info)
    objective = build_objective(cfg)
    state = TrainState(cfg, model, fwd, ema, make_optimizer(model, cfg),  # after wrapping: FSDP2 swaps parameters
                       build_framework(cfg, data.num_classes, tokenizer), objective, examples, labels, gen, info)
    if found is not None:  # every rank loads the same file, in place, so replicas stay identical
        state.step = load_checkpoint(found, model, ema, state.optimizer, gen)
        log.info("resumed from %s at step %d", found, state.step)
        if info.is_main:
            trim_metrics(out / "metrics.jsonl", state.step)
    metrics_file = MetricsLog(out) if info.is_main else None
    try:
        with stop_requests() as stop:
            _loop(state, out, metrics_file, stop, progress)
    finally:
        if metrics_file is not None:
            metrics_file.close()
    log.info("training done: %s", out)
    return out


def _checkpoint(state: TrainState, out: Path) -> None:
    """Save the full states (a collective under FSDP: every rank joins; rank 0 writes)."""
    states = full_state((state.model.state_dict(), state.ema.state_dict() if state.ema is not None else None,
                         state.optimizer.state_dict()))
    if state.info.is_main:
        save_checkpoint(out, *states, state.step, state.gen)
        if read_config(out / "config.yaml") != state.cfg:  # a resume that grew train.steps: now it is so
            state.cfg.save(out / "config.yaml")
    barrier(state.info)


def _loop(state: TrainState, out: Path, metrics_file: "MetricsLog | None", stop: dict, progress: bool) -> None:
    """Train to `train.steps`: steps, the bar, the metrics log (the loss parts read back once per log
    step), non-finite skips, rolling and kept checkpoints, and a checkpoint on SIGINT/SIGTERM."""
    t = state.cfg.train
    pbar = bar(total=t.steps, initial=state.step, desc=f"train {state.cfg.name}", progress=progress)
    state.model.train()
    tic, window, nonfinite, finite = time.perf_counter(), 0, 0, 0
    while state.step < t.steps:
        if stop["signal"]:
            _checkpoint(state, out)
            pbar.close()
            raise TrainingInterrupted(f"{stop['signal']} at step {state.step}: checkpoint saved in {out}; "
                                      f"continue with --resume")
        r = train_step(state)
        step = state.step
        pbar.update(1)
        if not r.finite:  # the update was skipped: the weights are the last good ones
            nonfinite += 1
            pbar.set_postfix(loss=f"{r.loss}", skipped=nonfinite, refresh=False)  # never the last finite value
            log.warning("non-finite loss %s at step %d skipped (%d so far)", r.loss, step - 1, nonfinite)
            if metrics_file is not None:
                metrics_file.write({"step": step - 1, "nonfinite_loss": r.loss, "nonfinite_count": nonfinite})
            if nonfinite > t.max_nonfinite or (step == t.steps and finite == 0):
                last = find_checkpoint(out)
                kept = f"the last good checkpoint (step {int(read_state(last)['step'])}) is kept in {last}" if last \
                    else "no checkpoint was written"
                raise FloatingPointError(f"training stopped at step {step}: {nonfinite} non-finite losses and "
                                         f"{finite} finite ones (train.max_nonfinite={t.max_nonfinite}); {kept}; "
                                         f"lower train.lr or check the data")
            if step == t.steps:  # the weights are the last finite step's: they are the run's result
                _checkpoint(state, out)
            continue
        finite += 1
        window += 1
        pbar.set_postfix(loss=f"{r.loss:.3f}", lint=r.lint if r.lint is not None else "-", refresh=False)
        keep = t.keep_every and step % t.keep_every == 0
        if step % t.ckpt_every == 0 or step == t.steps or keep:  # before the metrics: no record past a checkpoint
            _checkpoint(state, out)
        if keep and state.info.is_main:
            keep_copy(out, step)
        if (step % t.log_every == 0 or step == t.steps) and metrics_file is not None:
            rate = window / (time.perf_counter() - tic)
            tic, window = time.perf_counter(), 0
            record = {"step": step, **{k: float(v) for k, v in r.parts.items()}}
            if r.lint is not None:
                record.update(lam=r.lam, lint=r.lint)
            record.update(lr=lr_at(step - 1, state.cfg), grad_norm=float(r.grad_norm), steps_per_s=rate)
            metrics_file.write(record)
            pbar.set_postfix(loss=f"{r.loss:.3f}", lam=f"{r.lam:.2f}", lint=r.lint if r.lint is not None else "-",
                             gn=f"{record['grad_norm']:.2f}", it_s=f"{rate:.1f}")
    pbar.close()
