"""`elt train`: one run folder per training run — resolved config, tokenizer, checkpoints, metrics log.

Order of one step (see ARCHITECTURE.md): corrupt the batch (framework) → one looped forward pass
with an exit at Lint → ILSD combines the teacher's and the student's losses → backward → AdamW →
EMA → log.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config import Config
from ..ilsd import ILSD
from ..tokenizers import PixelTokenizer
from .assets import build_framework, build_model, encode_dataset, get_tokenizer, load_split
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint

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
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def prepare_run_dir(out: Path, resume: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder path")
    if not resume and find_checkpoint(out) is not None:
        raise ValueError(f"run folder {out} already holds a checkpoint; pass --resume to continue it "
                         f"or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to run folder {out} ({e.strerror}); choose a writable --out") from None


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True) -> Path:
    out = Path(out)
    cfg.validate()
    prepare_run_dir(out, resume)
    cfg.save(out / "config.yaml")
    t = cfg.train
    torch.manual_seed(t.seed)
    gen = torch.Generator().manual_seed(t.seed)

    data = load_split(cfg, "train")
    log.info("data: %s train, %d images %s, %d classes", cfg.data.dataset, len(data), data.images.shape[1:], data.num_classes)
    tokenizer = get_tokenizer(cfg, data, seed=t.seed, progress=progress)
    if not isinstance(tokenizer, PixelTokenizer):
        save_file({k: v.contiguous() for k, v in tokenizer.state_dict().items()}, str(out / "tokenizer.safetensors"))
    tokens = encode_dataset(tokenizer, data)
    labels = torch.as_tensor(data.labels)

    model = build_model(cfg, tokenizer.codebook_size, tokenizer.num_tokens, data.num_classes)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if t.ema_decay > 0 else None
    framework = build_framework(cfg, data.num_classes, tokenizer.codebook_size)
    objective = ILSD(cfg.model.min_loops, cfg.model.max_loops, t.steps, t.objective)
    optimizer = make_optimizer(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters, %dN x %dL, objective %s", cfg.name, n_params / 1e6,
             cfg.model.unique_layers, cfg.model.max_loops, t.objective)

    step = 0
    found = find_checkpoint(out) if resume else None
    if found is not None:
        step = load_checkpoint(found, model, ema, optimizer, gen)
        log.info("resumed from %s at step %d", found, step)
    metrics_file = (out / "metrics.jsonl").open("a")
    bar = tqdm(total=t.steps, initial=step, desc=f"train {cfg.name}", disable=not progress, dynamic_ncols=True)
    model.train()
    tic, window = time.perf_counter(), 0
    while step < t.steps:
        idx = torch.randint(0, len(tokens), (t.batch_size,), generator=gen)
        target, label = tokens[idx], labels[idx]
        inputs, label_in, mask = framework.corrupt(target, label, gen)
        lint = objective.draw_student_loops(gen)
        outputs = model.forward_exits(inputs, label_in, loops=cfg.model.max_loops, exits=objective.exits(lint))
        loss, parts = objective(outputs, lint, step,
                                gt_loss=lambda p: framework.gt_loss(p, target, mask),
                                dist_loss=lambda s, te: framework.dist_loss(s, te, mask))
        if not math.isfinite(parts["loss"]):
            raise FloatingPointError(f"loss became {parts['loss']} at step {step}; lower train.lr or check the data")
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
        optimizer.step()
        if ema is not None:
            ema_update(ema, model, t.ema_decay if step >= t.warmup_steps else 0.0)
        step += 1
        window += 1
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            rate = window / (time.perf_counter() - tic)
            tic, window = time.perf_counter(), 0
            record = {"step": step, **parts, "lr": lr_at(step - 1, cfg), "grad_norm": float(grad_norm), "steps_per_s": rate}
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lam=f"{parts.get('lam', 1.0):.2f}",
                            lint=parts.get("lint", "-"), gn=f"{float(grad_norm):.2f}", it_s=f"{rate:.1f}")
        if step % t.ckpt_every == 0 or step == t.steps:
            save_checkpoint(out, model, ema, optimizer, step, gen)
    bar.close()
    metrics_file.close()
    log.info("training done: %s", out)
    return out
