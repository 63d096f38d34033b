"""MaskGIT decoding (Chang et al. 2022, as the paper runs it) with a loop schedule chosen by the caller.

At step k of K, ratio = (k+1)/K:
  1. sample ids at masked positions from softmax(logits / STemp_k), STemp_k = t0 + t1·(1 − ratio);
  2. confidence = log p(sampled id) + τ_k·Gumbel with τ_k = choice_temperature·(1 − ratio);
     decoded tokens are final (only masked positions are candidates);
  3. keep floor(T·cos(π/2·ratio)) lowest-confidence positions masked (≥1 and ≤ #masked−1 while
     steps remain), so every position is decoded after K steps.
Tokens of two kinds (a motionvq clip's appearance tokens, then its motion tokens, each kind with its own ids):
`trailing` last positions drawing from the `trailing_vocab` last ids alone, decoded by confidence with the
rest, first, or last (`trailing_order`), at their own sampling temperature (`trailing_temperature`) if given.
Guidance (both frameworks' convention): logits = uncond + s·(cond − uncond) with the null class (the
paper's (1+w)·cond − w·uncond is s = 1 + w); s = 1 runs the conditional model only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..choices import MOTION_ORDERS
from ..core.loops import as_policy, guided_counts, logits_kl_change, loops_at, per_step_counts, run_policy


def gumbel(shape, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of softmax(logits) by inverting the CDF: one uniform per row instead of
    Gumbel noise on every logit (random numbers are the slow part on CPU)."""
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator).to(cdf.device) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True)[..., 0].clamp_(max=cdf.shape[-1] - 1)


@dataclass
class MaskGITSampler:
    steps: int = 12
    guidance: float = 1.0
    temp_base: float = 0.5
    temp_anneal: float = 0.8
    choice_temperature: float = 4.5
    guidance_loops: int | None = None  # the unconditional half at this many loops (None: the step's own)
    trailing: int = 0                  # the sequence's last `trailing` positions (a video's motion tokens) ...
    trailing_order: str = "joint"      # ... decoded by confidence like the rest (joint), at the first step (as
                                       # many as it decodes), or at the last step, given everything else
    trailing_vocab: int = 0            # the last ids of the vocabulary belong to the trailing positions alone
    trailing_temperature: float | None = None  # the trailing positions' sampling temperature (None: STemp_k)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"decoding steps must be >= 1, got {self.steps}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance scale must be >= 0 (1 = no guidance), got {self.guidance}")
        if self.trailing_vocab and not self.trailing:
            raise ValueError("trailing_vocab needs trailing positions (trailing >= 1)")
        if self.trailing_temperature is not None and not (self.trailing and self.trailing_temperature > 0):
            raise ValueError(f"trailing_temperature must be > 0 and needs trailing positions, got "
                             f"{self.trailing_temperature} with trailing={self.trailing}")
        if self.trailing_order not in MOTION_ORDERS:
            raise ValueError(f"trailing_order must be one of {', '.join(MOTION_ORDERS)}, got {self.trailing_order!r}")

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    def settings(self) -> dict:
        """Every setting that changes the samples (for reports and output names)."""
        out = {"steps": self.steps, "guidance": self.guidance, "temp_base": self.temp_base,
               "temp_anneal": self.temp_anneal, "choice_temperature": self.choice_temperature}
        if self.trailing and self.trailing_order != "joint":
            out["motion_order"] = self.trailing_order
        if self.trailing_temperature is not None:
            out["motion_temperature"] = self.trailing_temperature
        return out if self.guidance_loops is None or not self.guided else {**out, "guidance_loops": self.guidance_loops}

    def masked_after(self, step: int, num_tokens: int) -> int:
        """How many positions stay masked after decoding step `step` (0-based), before clamping."""
        ratio = (step + 1) / self.steps
        return math.floor(num_tokens * math.cos(math.pi / 2 * ratio))

    def keep_masked(self, step: int, num_tokens: int, masked: int) -> int:
        """Positions left masked after step `step` when `masked` were masked before it."""
        if step == self.steps - 1:
            return 0
        keep = min(max(1, self.masked_after(step, num_tokens)), masked - 1)
        if self.trailing_order == "last":  # room for the trailing positions to wait for the last step
            keep = max(keep, min(self.trailing, masked))
        return keep

    def flops(self, model, policy) -> float:
        """Transformer FLOPs of decoding one sample: every layer at every step, the head only at the positions
        still masked; with guidance the unconditional half too, at its own loops (`guidance_loops`) or the
        step's. Adaptive halting: the loops and heads it ran, on average."""
        counts = per_step_counts(policy, self.steps)
        if self.guided:
            counts = guided_counts(policy, self.steps, self.guidance_loops)
        t, total = model.num_tokens, 0.0
        for k, (L, heads) in enumerate(counts):
            masked = self.masked_before(k % self.steps, t)
            layers = model.flops(L, heads=0)
            total += layers + (model.flops(L, heads=heads) - layers) * masked / t
        return total

    def masked_before(self, step: int, num_tokens: int) -> int:
        """How many positions are masked when decoding step `step` begins."""
        masked = num_tokens
        for k in range(step):
            masked = self.keep_masked(k, num_tokens, masked)
        return masked

    def logits(self, model, tokens, labels, step_policy, positions: torch.Tensor | None = None, step: int = 0) -> torch.Tensor:
        """Guided logits (B, T, V), or (B, n, V) at `positions` (B, n) only; `step_policy` a loop count or an
        AdaptiveLoops (guidance: both halves of an example stop together)."""
        if not self.guided:
            return run_policy(model, (tokens, labels), step_policy, step, logits_kl_change, positions=positions).float()
        null = torch.full_like(labels, model.null_class)
        both = run_policy(model, (torch.cat([tokens, tokens]), torch.cat([labels, null])), step_policy, step,
                          logits_kl_change, groups=2, guidance_loops=self.guidance_loops,
                          positions=None if positions is None else torch.cat([positions, positions])).float()
        cond, uncond = both.chunk(2)
        return torch.lerp(uncond, cond, self.guidance)  # uncond + s·(cond − uncond) in one pass

    @torch.no_grad()
    def __call__(self, model, labels: torch.Tensor, policy, generator: torch.Generator | None = None,
                 callback=None) -> torch.Tensor:
        """Decode token ids (B, T) for class `labels` (B,); `policy`: an int, a LoopSchedule or an AdaptiveLoops.

        Every row has the same number n of masked positions at every step, so the head decodes just
        those: logits (B, n, V)."""
        policy = as_policy(policy)
        b, t = labels.shape[0], model.num_tokens
        tokens = torch.full((b, t), model.mask_id, dtype=torch.long, device=labels.device)
        for k in range(self.steps):
            ratio = (k + 1) / self.steps
            unknown = tokens == model.mask_id
            n = int(unknown[0].sum())
            where = unknown.nonzero()[:, 1].view(b, n)  # the masked positions of each row, ascending
            logits = self.logits(model, tokens, labels, loops_at(policy, k, self.steps), where, k)
            late = where >= t - self.trailing if self.trailing else None  # the trailing positions still masked
            if self.trailing_vocab:  # each position draws from its own part of the vocabulary only
                own = torch.arange(logits.shape[-1], device=logits.device) >= logits.shape[-1] - self.trailing_vocab
                logits = logits.masked_fill(late[..., None] != own, -math.inf)
            stemp = self.temp_base + self.temp_anneal * (1 - ratio)
            if self.trailing_temperature is not None:  # (B, n, 1): the trailing positions at their own
                stemp = torch.where(late, self.trailing_temperature, stemp)[..., None]
            logp = logits.log_softmax(-1)
            sampled = categorical(logp / stemp, generator)  # softmax(logp/T) = softmax(logits/T)
            logp = logp.gather(-1, sampled[..., None])[..., 0]
            tau = self.choice_temperature * (1 - ratio)
            confidence = logp + tau * gumbel(logp.shape, generator).to(logp.device)
            if self.trailing and self.trailing_order != "joint" and k < self.steps - 1:
                if self.trailing_order == "last":  # kept masked until the last step: decoded given everything else
                    confidence = confidence.masked_fill(late, -math.inf)
                elif k == 0:  # decoded at the first step: everything else is decoded given them
                    confidence = confidence.masked_fill(late, math.inf)
            tokens = tokens.scatter(1, where, sampled)
            n_keep = self.keep_masked(k, t, n)
            if n_keep > 0:  # exactly n_keep lowest-confidence positions per row stay masked
                lowest = confidence.topk(n_keep, dim=-1, largest=False).indices
                tokens.scatter_(1, where.gather(1, lowest), model.mask_id)
            if callback is not None:
                callback(k, tokens)
        return tokens
