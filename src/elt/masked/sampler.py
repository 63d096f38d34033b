"""MaskGIT decoding (spec §4.1) with a loop schedule chosen by the caller.

At step k of K, ratio = (k+1)/K:
  1. sample ids at masked positions from softmax(logits / STemp_k), STemp_k = t0 + t1·(1 − ratio);
  2. confidence = log p(sampled id) + τ_k·Gumbel with τ_k = choice_temperature·(1 − ratio);
     known tokens get +inf;
  3. keep floor(T·cos(π/2·ratio)) lowest-confidence positions masked (≥1 and ≤ #masked−1 while
     steps remain), so every position is decoded after K steps.
CFG: logits = (1+w)·cond − w·uncond with the null class; w = 0 runs the conditional model only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..loops import LoopSchedule


def gumbel(shape, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


@dataclass
class MaskGITSampler:
    steps: int = 12
    cfg: float = 0.0
    temp_base: float = 0.5
    temp_anneal: float = 0.8
    choice_temperature: float = 4.5

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"decoding steps must be >= 1, got {self.steps}")
        if self.cfg < 0:
            raise ValueError(f"cfg scale must be >= 0, got {self.cfg}")

    def masked_after(self, step: int, num_tokens: int) -> int:
        """How many positions stay masked after decoding step `step` (0-based), before clamping."""
        ratio = (step + 1) / self.steps
        return math.floor(num_tokens * math.cos(math.pi / 2 * ratio))

    def logits(self, model, tokens, labels, loops: int) -> torch.Tensor:
        if self.cfg == 0:
            return model(tokens, labels, loops=loops).float()
        null = torch.full_like(labels, model.null_class)
        both = model(torch.cat([tokens, tokens]), torch.cat([labels, null]), loops=loops).float()
        cond, uncond = both.chunk(2)
        return (1 + self.cfg) * cond - self.cfg * uncond

    @torch.no_grad()
    def __call__(self, model, labels: torch.Tensor, loops, generator: torch.Generator | None = None,
                 callback=None) -> torch.Tensor:
        """Decode token ids (B, T) for class `labels` (B,); `loops` is an int or a LoopSchedule."""
        schedule = LoopSchedule.coerce(loops)
        b, t = labels.shape[0], model.num_tokens
        tokens = torch.full((b, t), model.mask_id, dtype=torch.long, device=labels.device)
        for k in range(self.steps):
            ratio = (k + 1) / self.steps
            logits = self.logits(model, tokens, labels, schedule.loops_at(k, self.steps))
            unknown = tokens == model.mask_id
            stemp = self.temp_base + self.temp_anneal * (1 - ratio)
            sampled = (logits / stemp + gumbel(logits.shape, generator).to(logits.device)).argmax(-1)
            sampled = torch.where(unknown, sampled, tokens)
            logp = logits.log_softmax(-1).gather(-1, sampled[..., None])[..., 0]
            tau = self.choice_temperature * (1 - ratio)
            confidence = logp + tau * gumbel(logp.shape, generator).to(logp.device)
            confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))
            n_unknown = int(unknown[0].sum())
            n_keep = 0 if k == self.steps - 1 else min(max(1, self.masked_after(k, t)), n_unknown - 1)
            remask = torch.zeros_like(unknown)
            if n_keep > 0:  # exactly n_keep lowest-confidence positions per sample stay masked
                remask.scatter_(1, confidence.topk(n_keep, dim=-1, largest=False).indices, True)
            tokens = torch.where(remask, torch.full_like(tokens, model.mask_id), sampled)
            if callback is not None:
                callback(k, tokens)
        return tokens
