"""`elt train`, read top to bottom: set-up (devices, checks, the run folder and its lock) → data → tokens
(`prepare`, or what the caller prepared) → model, EMA and optimizer → resume → the loop around
`step.train_step` (corrupt → one looped forward pass with an exit at Lint → ILSD → backward → AdamW →
EMA) → the metrics log → checkpoints, with exact resume and a checkpoint on SIGINT/SIGTERM."""
from __future__ import annotations

import copy
import logging
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import Config, ConfigError, read_config
from ..utils.atomic import write_text
from ..utils.progress import bar
from .build import build_framework, build_model, build_objective, nominal_model
from .checkpoint import find_checkpoint, keep_copy, load_checkpoint, read_state, save_checkpoint, save_weights
from .devices import DistInfo, barrier, check_fits, full_state
from .devices import setup as setup_devices
from .devices import teardown as teardown_devices
from .prepare import Prepared, check_splits, prepare
from .run import (CONFIG, DATA_SPEC, METRICS, TOKENIZER, MetricsLog, RunLock, check_resume_config, prepare_run_dir,
                  save_data_spec, trim_metrics)
from .step import TrainState, lr_at, make_optimizer, train_step, wrap_model

log = logging.getLogger("elt")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; the checkpoint of the last finished step was saved. `signum` says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
          prepared: Prepared | None = None) -> Path:
    """Train `cfg` into the run folder `out` (continue its last checkpoint with `resume`). `prepared`: the
    data, tokenizer and tokens when the caller built them already (`elt demo`); else they are built here."""
    out = Path(out)
    cfg.validate()
    info = setup_devices(cfg.train.device)
    finished, lock = False, RunLock(out, "elt train")
    try:
        result = _train(cfg, out, resume, progress, prepared, info, lock)
        finished = True
        return result
    finally:  # after _train returned: the model and its process-group state are freed before the group ends
        lock.release()
        teardown_devices(finished)


def _train(cfg: Config, out: Path, resume: bool, progress: bool, prepared: Prepared | None, info: DistInfo,
           lock: RunLock) -> Path:
    """The training itself, top to bottom (under `train`, which sets up the devices and the lock)."""
    t, m = cfg.train, cfg.model
    # --- set-up: every check before any work
    check_fits(sum(p.numel() for p in nominal_model(cfg).parameters()), info.device,
               f"model.width={m.width} with {m.unique_layers} unique layers", "lower model.width or model.unique_layers")
    check_splits(cfg)
    prepare_run_dir(out, resume)
    per_rank, rest = divmod(t.batch_size, info.world_size * t.grad_accum)
    if rest or per_rank < 1:
        raise ConfigError(f"bad config value train.batch_size: {t.batch_size} is not divisible by "
                          f"processes ({info.world_size}) x train.grad_accum ({t.grad_accum})")
    found = find_checkpoint(out) if resume else None
    if found is not None:
        check_resume_config(cfg, out, found)
        done = int(read_state(found)["step"])
        if t.steps <= done:
            raise ValueError(f"{out} is already trained to step {done}; --steps {t.steps} adds nothing (give "
                             f"more steps to continue it, or sample and evaluate it as it is)")
    if info.is_main:  # one writer per run folder (rank 0 writes for every rank)
        lock.acquire()
        if found is None:  # a resumed run's config.yaml changes with its next checkpoint
            if (out / METRICS).is_file():  # a run killed before its first checkpoint
                log.info("%s has no checkpoint: training it from the start again", out)
                write_text(out / METRICS, "")
            cfg.save(out / CONFIG)
    torch.manual_seed(t.seed)  # same initial weights on every rank (FSDP2 does not broadcast them)
    gen = torch.Generator().manual_seed(t.seed)  # identical on every rank: the global batch

    # --- data → tokens
    prepared = prepared or prepare(cfg, info, progress and info.is_main)
    log.info("data: %s, %d classes", prepared.source, prepared.num_classes)
    if info.is_main:
        save_data_spec(prepared.example_shape, prepared.class_names, out / DATA_SPEC)
        if prepared.tokenizer.learned:
            save_weights(prepared.tokenizer, out / TOKENIZER)

    # --- model, EMA, optimizer (after wrapping: FSDP2 swaps the parameters)
    model = build_model(cfg, prepared.tokenizer, prepared.num_classes).to(info.device)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if t.ema_decay > 0 else None
    _warn_long_ema(cfg)
    torch.manual_seed(t.seed + info.rank)  # per-rank dropout; data order comes from `gen`
    log.info("model %s: %.2fM parameters, %dN x %dL, objective %s, %d process(es) on %s", cfg.name,
             sum(p.numel() for p in model.parameters()) / 1e6, m.unique_layers, m.max_loops,
             cfg.objective_label(), info.world_size, info.device)
    fwd = wrap_model(model, cfg, info)
    state = TrainState(cfg, model, fwd, ema, make_optimizer(model, cfg),
                       build_framework(cfg, prepared.num_classes, prepared.tokenizer), build_objective(cfg),
                       prepared.examples, prepared.labels, gen, info)

    # --- resume: every rank loads the same file, in place, so replicas stay identical
    if found is not None:
        state.step = load_checkpoint(found, model, ema, state.optimizer, gen)
        log.info("resumed from %s at step %d", found, state.step)
        if info.is_main:
            trim_metrics(out / METRICS, state.step)

    # --- the loop, the metrics log, the checkpoints
    metrics = MetricsLog(out) if info.is_main else None
    try:
        with stop_requests() as stop:
            _loop(state, out, metrics, stop, progress and info.is_main)
    finally:
        if metrics is not None:
            metrics.close()
    log.info("training done: %s", out)
    return out


def _warn_long_ema(cfg: Config) -> None:
    """A warning when the EMA would still be mostly the early weights at the last step. Not for a run that
    ends within its warm-up: the EMA copies the weights until warm-up ends, so it holds the last ones."""
    t = cfg.train
    horizon = t.steps - t.warmup_steps
    if horizon > 0 and 0 < t.ema_decay < 1 and 1 / (1 - t.ema_decay) > horizon / 3:
        log.warning("train.ema_decay=%g averages the weights over ~%d steps, but this run trains %d after warm-up: "
                    "its EMA weights (what sample and evaluate use) will be mostly the early ones; lower "
                    "train.ema_decay (e.g. %g) or sample the raw weights (--set sample.use_ema=false)", t.ema_decay,
                    round(1 / (1 - t.ema_decay)), horizon, round(1 - 3 / max(horizon, 3), 3))


def _loop(state: TrainState, out: Path, metrics: MetricsLog | None, stop: dict, progress: bool) -> None:
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
            raise TrainingInterrupted(f"{signal.Signals(stop['signal']).name} at step {state.step}: checkpoint saved "
                                      f"in {out}; continue with --resume", stop["signal"])
        r = train_step(state)
        step = state.step
        pbar.update(1)
        if not r.finite:  # the update was skipped: the weights are the last good ones
            nonfinite += 1
            pbar.set_postfix(loss=f"{r.loss}", skipped=nonfinite, refresh=False)  # never the last finite value
            log.warning("non-finite loss %s at step %d skipped (%d so far)", r.loss, step - 1, nonfinite)
            if metrics is not None:
                metrics.write({"step": step - 1, "nonfinite_loss": r.loss, "nonfinite_count": nonfinite})
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
        if (step % t.log_every == 0 or step == t.steps) and metrics is not None:
            rate = window / (time.perf_counter() - tic)
            tic, window = time.perf_counter(), 0
            record = {"step": step, **{k: float(v) for k, v in r.parts.items()}}
            if r.lint is not None:
                record.update(lam=r.lam, lint=r.lint)
            record.update(lr=lr_at(step - 1, state.cfg), grad_norm=float(r.grad_norm), steps_per_s=rate)
            metrics.write(record)
            pbar.set_postfix(loss=f"{r.loss:.3f}", lam=f"{r.lam:.2f}", lint=r.lint if r.lint is not None else "-",
                             gn=f"{record['grad_norm']:.2f}", it_s=f"{rate:.1f}")
    pbar.close()


def _checkpoint(state: TrainState, out: Path) -> None:
    """Save the full states (a collective under FSDP: every rank joins; rank 0 writes)."""
    states = full_state((state.model.state_dict(), state.ema.state_dict() if state.ema is not None else None,
                         state.optimizer.state_dict()))
    if state.info.is_main:
        save_checkpoint(out, *states, state.step, state.gen, state.cfg.to_yaml())
        if read_config(out / CONFIG) != state.cfg:  # a resume that grew train.steps: now it is so
            state.cfg.save(out / CONFIG)
    barrier(state.info)


@contextmanager
def stop_requests():
    """Turn SIGINT/SIGTERM into a flag checked between steps (restored afterwards)."""
    flag = {"signal": None}

    def handler(signum, frame):
        if flag["signal"] is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        flag["signal"] = signum

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
