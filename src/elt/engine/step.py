"""One training step — the same function for `elt train` and `elt bench`.

The order of a step: draw the global batch (identically on every rank) → corrupt it (the framework:
mask tokens or add noise) → draw Lint → one looped forward pass with an exit at Lint → ILSD combines
the teacher's and the student's losses → backward (this rank's micro-batches) → clip → AdamW → EMA.

Every rank draws the same global batch, corruption and Lint from one generator and keeps its own
slice; each slice's loss is weighted by its share of the global batch, so any number of processes
(or `train.grad_accum` micro-batches) gives the weights of one process. A step reads one number back
from the device: the global loss (the bar shows it, and a non-finite loss skips the update on every
rank alike); the loss parts and the gradient norm stay tensors until the loop logs them.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
from dataclasses import dataclass

import torch

from ..config import Config
from ..core.ilsd import ILSD
from .devices import DistInfo, autocast, full_state

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
                     student_loss=None if fused is None else lambda s, t, lam: fused(s, t, target, aux, lam),
                     rows=framework.rows(aux) if torch.is_tensor(lint) else None)


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


@dataclass
class TrainState:
    """What a training step reads and changes. `model` is the bare network (checkpoints are saved from
    it: no `module.` or `_orig_mod.` prefixes); `fwd` is what the step calls (DDP/FSDP, compiled
    blocks); `gen` draws the data order, corruption and Lint identically on every rank."""
    cfg: Config
    model: torch.nn.Module
    fwd: torch.nn.Module
    ema: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    framework: object
    objective: ILSD
    examples: torch.Tensor      # the training set's token ids (masked) or latents (diffusion)
    labels: torch.Tensor
    gen: torch.Generator
    info: DistInfo
    step: int = 0


@dataclass
class StepResult:
    loss: float                    # the global batch's loss (read back: non-finite means the step was skipped)
    parts: dict                    # loss parts as tensors (global batch), read when logged
    grad_norm: torch.Tensor | None
    lint: int | str | None         # the step's Lint, "example" when drawn per example, None: not distilled
    lam: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


def train_step(state: TrainState) -> StepResult:
    """One optimisation step (see the module's docstring); advances `state.step` even when a
    non-finite loss skips the update."""
    s, t = state, state.cfg.train
    info = s.info
    micro = t.batch_size // (info.world_size * t.grad_accum)
    idx = torch.randint(0, len(s.examples), (t.batch_size,), generator=s.gen)
    inputs, target, aux = s.framework.corrupt(s.examples[idx], s.labels[idx], s.gen)
    lint = s.objective.draw_lint(s.gen, t.batch_size)
    total_weight = s.framework.loss_weight(aux)
    for group in s.optimizer.param_groups:
        group["lr"] = lr_at(s.step, s.cfg)
    s.optimizer.zero_grad(set_to_none=True)
    mixed = autocast(t.precision, info.device)
    parts: dict[str, torch.Tensor] = {}  # weighted like the loss: the global batch's values
    for i in range(t.grad_accum):
        k = info.rank * t.grad_accum + i
        sl = slice(k * micro, (k + 1) * micro)
        x = tuple(v[sl].to(info.device) for v in inputs)
        tgt, a = target[sl].to(info.device), aux[sl].to(info.device)
        # Weight = this slice's share of the global loss; DDP averages over ranks, hence × world.
        weight = s.framework.loss_weight(aux[sl]) / total_weight * info.world_size
        sync = t.grad_accum == 1 or i == t.grad_accum - 1 or not hasattr(s.fwd, "no_sync")
        with (contextlib.nullcontext() if sync else s.fwd.no_sync()), mixed:
            lint_here = lint[sl] if torch.is_tensor(lint) else lint
            loss, terms = forward_loss(s.fwd, s.framework, s.objective, x, tgt, a, lint_here, s.step)
        (loss * weight).backward()
        for name, v in terms.items():
            parts[name] = parts.get(name, 0.0) + v.double() * (weight / info.world_size)
    names = sorted(parts)
    summed = torch.stack([parts[n] for n in names])
    if info.enabled:  # every rank gets the global values and decides alike about a non-finite loss
        torch.distributed.all_reduce(summed)
    parts = dict(zip(names, summed.unbind()))
    lam = s.objective.mix(s.step) if lint is not None else 1.0  # the λ in use (0 when distillation alone)
    lint = "example" if torch.is_tensor(lint) else lint
    total = float(parts["loss"])  # the step's one read-back
    s.step += 1
    if not math.isfinite(total):  # skip the update, keep the weights finite
        return StepResult(total, parts, None, lint, lam)
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
    s.optimizer.step()
    if s.ema is not None:
        ema_update(s.ema, s.model, t.ema_decay if s.step - 1 >= t.warmup_steps else 0.0)
    return StepResult(total, parts, full_state(grad_norm), lint, lam)
