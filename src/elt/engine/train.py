"""`elt train`: one run folder per training run — resolved config, tokenizer, checkpoints, metrics log.

Order of one step (see ARCHITECTURE.md): corrupt the batch (framework) → one looped forward pass
with an exit at Lint → ILSD combines the teacher's and the student's losses → backward → AdamW →
EMA → log.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import write_text
from ..config import Config, ConfigError, load_config
from ..ilsd import ILSD
from .assets import (build_framework, build_model, encode_dataset, get_tokenizer, is_learned, load_split, save_data_spec,
                     save_weights)
from . import precision
from .distributed import DistInfo, barrier, full_state
from .distributed import setup as dist_setup
from .distributed import teardown as dist_teardown
from .checkpoint import find_checkpoint, keep_copy, load_checkpoint, save_checkpoint

log = logging.getLogger("elt")


def lr_at(step: int, cfg: Config) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings (the usual transformer recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "emb" not in name else no_decay).append(p)
    t = cfg.train
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=t.lr, betas=(t.beta1, t.beta2))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """EMA of the weights; kept unsharded (under FSDP2 the shards are gathered: every rank calls this)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.full_tensor() if hasattr(p, "full_tensor") else p, 1 - decay)


def prepare_run_dir(out: Path, resume: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder path")
    if not resume and find_checkpoint(out) is not None:
        raise ValueError(f"run folder {out} already holds a checkpoint; pass --resume to continue it "
                         f"or choose another --out")
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
    saved, new = _flat(load_config(str(saved_path)).to_dict()), _flat(cfg.to_dict())
    diff = [k for k in new if k != "train.steps" and new[k] != saved.get(k)]
    if diff:
        raise ConfigError(f"--resume with a config that differs from {saved_path} in {', '.join(diff)}; "
                          f"resume with --config {saved_path} (only --steps may change)")


class _ExitsForward(torch.nn.Module):
    """Makes `forward_exits` the module's forward, so DDP's gradient hooks see it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *inputs, loops: int, exits=(), **head_kw):
        return self.model.forward_exits(*inputs, loops=loops, exits=exits, **head_kw)


def forward_loss(fwd, framework, objective: ILSD, inputs: tuple, target, aux, lint: int | None, step: int):
    """One looped forward pass (teacher at Lmax, student exit at `lint`) and the ILSD loss. `aux` is
    what the framework's corruption returned beside inputs and target (the mask, the loss weights)."""
    outputs = fwd(*inputs, loops=objective.max_loops, exits=objective.exits(lint), **framework.head_kwargs(aux))
    fused = getattr(framework, "student_loss", None)
    return objective({k: v.float() for k, v in outputs.items()}, lint, step,
                     gt_loss=lambda p: framework.gt_loss(p, target, aux),
                     dist_loss=lambda s, t: framework.dist_loss(s, t, aux),
                     student_loss=None if fused is None else lambda s, t, lam: fused(s, t, target, aux, lam))


def wrap_model(model: torch.nn.Module, cfg: Config, info: DistInfo) -> torch.nn.Module:
    """The module the loop calls: DDP/FSDP2 across processes, optionally compiled. Weights are
    always saved from the bare `model` (no `module.` or `_orig_mod.` prefixes in checkpoints)."""
    if cfg.train.compile and info.device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        log.warning("train.compile: no C++ compiler found (torch.compile needs one on CPU); training eagerly")
    elif cfg.train.compile:  # the block, not the loop: Lint changes every step
        model.stack.compile_layers()
    fwd = _ExitsForward(model)
    if info.enabled and cfg.train.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        # One FSDP unit for the whole looped model: its N blocks are reused L times per forward,
        # so they are gathered once per forward instead of once per loop.
        fully_shard(fwd)
    elif info.enabled:
        from torch.nn.parallel import DistributedDataParallel
        fwd = DistributedDataParallel(fwd, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return fwd


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    out = Path(out)
    cfg.validate()
    info = dist_setup(cfg.train.device)
    finished = False
    try:
        result = _train(cfg, out, resume, progress and info.is_main, info)
        finished = True
        return result
    finally:
        dist_teardown(finished)


def _train(cfg: Config, out: Path, resume: bool, progress: bool, info: DistInfo) -> Path:
    t = cfg.train
    per_rank, rest = divmod(t.batch_size, info.world_size * t.grad_accum)
    if rest or per_rank < 1:
        raise ConfigError(f"bad config value train.batch_size: {t.batch_size} is not divisible by "
                          f"processes ({info.world_size}) x train.grad_accum ({t.grad_accum})")
    prepare_run_dir(out, resume)
    if resume and find_checkpoint(out) is not None:
        check_resume_config(cfg, out)
    if info.is_main:
        cfg.save(out / "config.yaml")
    torch.manual_seed(t.seed)  # same initial weights on every rank (FSDP2 does not broadcast them)
    gen = torch.Generator().manual_seed(t.seed)  # identical on every rank: the global batch

    if cfg.data.dataset == "extracted":  # pre-encoded by `elt extract`: memory-mapped shards
        from .extract import Extracted
        tokens = Extracted(cfg.data.data_dir)
        tokenizer, data, labels = tokens.tokenizer(cfg), tokens.as_data(), tokens.labels
        log.info("data: %s, %d examples %s, %d classes", tokens.folder, len(tokens), tuple(tokens.shape[1:]),
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
            tokenizer, tokens = tokenize(progress)
        barrier(info)
        if not info.is_main:
            tokenizer, tokens = tokenize(False)
        labels = torch.as_tensor(data.labels)
    if info.is_main:
        save_data_spec(data, out / "data.json")
        if is_learned(tokenizer):
            save_weights(tokenizer, out / "tokenizer.safetensors")

    model = build_model(cfg, tokenizer, data.num_classes).to(info.device)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if t.ema_decay > 0 else None
    torch.manual_seed(t.seed + info.rank)  # per-rank dropout; data order comes from `gen`
    framework = build_framework(cfg, data.num_classes, tokenizer)
    objective = ILSD(cfg.model.min_loops, cfg.model.max_loops, t.steps, t.objective)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters, %dN x %dL, objective %s, %d process(es) on %s", cfg.name, n_params / 1e6,
             cfg.model.unique_layers, cfg.model.max_loops, t.objective, info.world_size, info.device)

    step = 0
    found = find_checkpoint(out) if resume else None
    fwd = wrap_model(model, cfg, info)
    optimizer = make_optimizer(model, cfg)  # after wrapping: FSDP2 swaps parameters for sharded ones
    if found is not None:  # every rank loads the same file, in place, so replicas stay identical
        step = load_checkpoint(found, model, ema, optimizer, gen)
        log.info("resumed from %s at step %d", found, step)
        if info.is_main:
            trim_metrics(out / "metrics.jsonl", step)
    metrics_file = MetricsLog(out) if info.is_main else None
    try:
        with stop_requests() as stop:
            _loop(cfg, out, step, model, fwd, ema, optimizer, gen, tokens, labels, framework, objective,
                  metrics_file, stop, progress, info)
    finally:
        if metrics_file is not None:
            metrics_file.close()
    log.info("training done: %s", out)
    return out


def _loop(cfg, out, step, model, fwd, ema, optimizer, gen, tokens, labels, framework, objective, metrics_file,
          stop, progress, info):
    t = cfg.train
    micro = t.batch_size // (info.world_size * t.grad_accum)
    autocast = precision.autocast(t.precision, info.device)

    def checkpoint():
        states = full_state((model.state_dict(), ema.state_dict() if ema is not None else None,
                             optimizer.state_dict()))  # a collective under FSDP: every rank joins
        if info.is_main:
            save_checkpoint(out, *states, step, gen)
        barrier(info)

    bar = tqdm(total=t.steps, initial=step, desc=f"train {cfg.name}", disable=not progress, dynamic_ncols=True)
    model.train()
    tic, window, nonfinite = time.perf_counter(), 0, 0
    while step < t.steps:
        if stop["signal"]:
            checkpoint()
            bar.close()
            raise TrainingInterrupted(f"{stop['signal']} at step {step}: checkpoint saved in {out}; "
                                      f"continue with --resume")
        # The global batch, its corruption and Lint are drawn identically on every rank.
        idx = torch.randint(0, len(tokens), (t.batch_size,), generator=gen)
        inputs, target, aux = framework.corrupt(tokens[idx], labels[idx], gen)
        lint = objective.draw_student_loops(gen)
        total_weight = framework.loss_weight(aux)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss_terms: dict[str, float] = {}  # loss parts, weighted like the loss: the global batch's values
        for i in range(t.grad_accum):
            sl = slice((info.rank * t.grad_accum + i) * micro, (info.rank * t.grad_accum + i + 1) * micro)
            x = tuple(v[sl].to(info.device) for v in inputs)
            tgt, a = target[sl].to(info.device), aux[sl].to(info.device)
            # Weight = this slice's share of the global loss; DDP averages over ranks, hence × world.
            weight = framework.loss_weight(aux[sl]) / total_weight * info.world_size
            sync = t.grad_accum == 1 or i == t.grad_accum - 1 or not hasattr(fwd, "no_sync")
            with (contextlib.nullcontext() if sync else fwd.no_sync()), autocast:
                loss, parts = forward_loss(fwd, framework, objective, x, tgt, a, lint, step)
            (loss * weight).backward()
            for k, v in {**parts, "loss": loss.item()}.items():
                if k.startswith("loss"):
                    loss_terms[k] = loss_terms.get(k, 0.0) + v * weight / info.world_size
        keys = sorted(loss_terms)
        summed = torch.tensor([loss_terms[k] for k in keys], dtype=torch.float64, device=info.device)
        if info.enabled:  # every rank logs the global values and decides alike about a non-finite loss
            torch.distributed.all_reduce(summed)
        parts.update(zip(keys, summed.tolist()))
        total_loss = parts["loss"]
        if not math.isfinite(total_loss):  # skip the update, keep the weights finite
            nonfinite += 1
            log.warning("non-finite loss %s at step %d skipped (%d so far)", total_loss, step, nonfinite)
            if metrics_file is not None:
                metrics_file.write({"step": step, "nonfinite_loss": total_loss, "nonfinite_count": nonfinite})
            if nonfinite > t.max_nonfinite:
                raise FloatingPointError(f"{nonfinite} non-finite losses (last at step {step}), more than "
                                         f"train.max_nonfinite={t.max_nonfinite}; lower train.lr or check the data")
            step += 1
            bar.update(1)
            continue
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
        grad_norm = float(full_state(grad_norm))
        optimizer.step()
        if ema is not None:
            ema_update(ema, model, t.ema_decay if step >= t.warmup_steps else 0.0)
        step += 1
        window += 1
        bar.update(1)
        if (step % t.log_every == 0 or step == t.steps) and metrics_file is not None:
            rate = window / (time.perf_counter() - tic)
            tic, window = time.perf_counter(), 0
            record = {"step": step, **parts, "lr": lr_at(step - 1, cfg),
                      "grad_norm": grad_norm, "steps_per_s": rate}
            metrics_file.write(record)
            bar.set_postfix(loss=f"{total_loss:.3f}", lam=f"{parts.get('lam', 1.0):.2f}",
                            lint=parts.get("lint", "-"), gn=f"{grad_norm:.2f}", it_s=f"{rate:.1f}")
        keep = t.keep_every and step % t.keep_every == 0
        if step % t.ckpt_every == 0 or step == t.steps or keep:
            checkpoint()
        if keep and info.is_main:
            keep_copy(out, step)
    bar.close()
