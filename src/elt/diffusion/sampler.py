"""Diffusion samplers on the continuous log-SNR schedule, separate from the network.

K steps from t = 1 to t = 0 on a uniform grid in t. At each step the network (run for the loop
count the schedule gives this step) predicts x̂₀ and ε̂ from x_t; then, from t to s < t:
  DDIM (η = 0, deterministic):  x_s = α_s·x̂₀ + σ_s·ε̂
  DDPM ancestral (the paper's): x_s ~ q(x_s | x_t, x̂₀), the Gaussian posterior with
      α_{t|s} = α_t/α_s, σ²_{t|s} = σ_t² − α²_{t|s}·σ_s²,
      mean = α_{t|s}·σ_s²/σ_t²·x_t + α_s·σ²_{t|s}/σ_t²·x̂₀,  variance = σ²_{t|s}·σ_s²/σ_t².
  DPM-Solver++(2M) (Lu et al. 2022, the multistep data-prediction form, written in the half log-SNR
  ℓ = log(α/σ) = λ/2 as the paper states it): with h = ℓ_s − ℓ_t and the previous step's h',
      D = (1 + 1/(2r))·x̂₀ − 1/(2r)·x̂₀_prev,  r = h'/h   (D = x̂₀ at the first step: first order)
      x_s = (σ_s/σ_t)·x_t + α_s·(1 − e^{−h})·D
  Its first order is DDIM exactly; the second reuses the last step's prediction, no extra network call.
The last step returns x̂₀ (first order at the end, as DPM-Solver++ recommends below 15 steps). Classifier-free guidance on all channels (DiT's convention):
pred = uncond + s·(cond − uncond); s = 1 runs the conditional model only.
diffusers' DDIM/DDPM schedulers work on discrete beta tables and cannot express the shifted
log-SNR schedule exactly, so the updates are written here and tested (DDIM with an exact x₀
oracle returns the data).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.loops import as_policy, guided_counts, loops_at, per_step_counts, relative_rms_change, run_policy
from .framework import to_x0_eps
from .schedules import LogSNRSchedule

from ..choices import DIFFUSION_SAMPLERS as SAMPLERS


def half_logsnr(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ℓ = log(α/σ), DPM-Solver's λ (half the log-SNR), in float64 for the step sizes."""
    return torch.log(alpha.double()) - torch.log(sigma.double())


@dataclass
class DiffusionSampler:
    schedule: LogSNRSchedule
    steps: int = 50
    guidance: float = 1.0
    kind: str = "ddim"
    prediction: str = "v"
    clip: float | None = None  # clip x̂₀ to [-clip, clip] (pixel space: 1); None for latents
    order: int = 2             # DPM-Solver++: 2 (2M), or 1 (= DDIM)
    guidance_loops: int | None = None  # the unconditional half at this many loops (None: the step's own)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {self.steps}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance scale must be >= 0 (1 = no guidance), got {self.guidance}")
        if self.kind not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.kind!r}")
        if self.order not in (1, 2):
            raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {self.order}")

    @property
    def guided(self) -> bool:
        return self.guidance != 1.0

    def settings(self) -> dict:
        out = {"sampler": self.kind, "steps": self.steps, "guidance": self.guidance, "prediction": self.prediction,
               "clip": self.clip, "logsnr_shift": round(self.schedule.shift, 6)}
        return out if self.guidance_loops is None or not self.guided else {**out, "guidance_loops": self.guidance_loops}

    def flops(self, model, policy) -> float:
        """Network FLOPs of sampling one example, decoder excluded; with guidance the unconditional half too, at
        its own loops (`guidance_loops`) or the step's. Adaptive halting: the loops and heads it ran, on average."""
        counts = guided_counts(policy, self.steps, self.guidance_loops) if self.guided \
            else per_step_counts(policy, self.steps)
        return float(sum(model.flops(L, heads=h) for L, h in counts))

    def predict(self, model, x, t, labels, step_policy, step: int = 0) -> torch.Tensor:
        """The guided prediction at time t; `step_policy` a loop count or an AdaptiveLoops (the relative
        change of the prediction between loops decides; both guidance halves stop together)."""
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        if not self.guided:
            return run_policy(model, (x, tt, labels), step_policy, step, relative_rms_change).float()
        null = torch.full_like(labels, model.null_class)
        both = run_policy(model, (torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])), step_policy, step,
                          relative_rms_change, groups=2, guidance_loops=self.guidance_loops).float()
        cond, uncond = both.chunk(2)
        return torch.lerp(uncond, cond, self.guidance)

    @torch.no_grad()
    def __call__(self, model, labels: torch.Tensor, policy, generator: torch.Generator | None = None,
                 callback=None) -> torch.Tensor:
        """Latents (B, C, H, W) for class `labels` (B,); `policy`: an int, a LoopSchedule or an AdaptiveLoops."""
        policy = as_policy(policy)
        shape = (labels.shape[0], model.in_channels, model.input_size, model.input_size)
        x = torch.randn(shape, generator=generator).to(labels.device)
        ts = torch.linspace(1.0, 0.0, self.steps + 1)
        alphas, sigmas = self.schedule.alpha_sigma(ts)
        prev = None  # DPM-Solver++: the last step's x̂₀ and h
        for k in range(self.steps):
            a_t, s_t, a_s, s_s = alphas[k], sigmas[k], alphas[k + 1], sigmas[k + 1]
            pred = self.predict(model, x, ts[k], labels, loops_at(policy, k, self.steps), k)
            x0, eps = to_x0_eps(pred, x, a_t, s_t, self.prediction)
            if self.clip is not None:
                x0 = x0.clamp(-self.clip, self.clip)
                eps = (x - a_t * x0) / s_t
            if k == self.steps - 1:
                x = x0
            elif self.kind == "dpmpp2m":
                h = half_logsnr(a_s, s_s) - half_logsnr(a_t, s_t)
                d = x0
                if self.order == 2 and prev is not None:  # the multistep correction from the last prediction
                    r = prev[1] / h
                    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev[0]
                x = (s_s / s_t) * x + a_s * (-torch.expm1(-h)) * d
                prev = (x0, h)
            elif self.kind == "ddim":
                x = a_s * x0 + s_s * eps
            else:
                a_ts = a_t / a_s
                var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
                mean = (a_ts * s_s ** 2 / s_t ** 2) * x + (a_s * var_ts / s_t ** 2) * x0
                noise = torch.randn(x.shape, generator=generator).to(x.device)
                x = mean + (var_ts * s_s ** 2 / s_t ** 2).sqrt() * noise
            if callback is not None:
                callback(k, x)
        return x
