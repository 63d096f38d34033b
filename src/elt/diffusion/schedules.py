"""Continuous-time noise schedules in log-SNR (Kingma et al. 2021; Hoogeboom et al. 2023), as the paper's DiT setting uses them.

x_t = α_t·x₀ + σ_t·ε with α² = sigmoid(λ), σ² = sigmoid(−λ) (variance preserving), t ∈ [0, 1]:
t = 0 is (almost) clean data, t = 1 (almost) pure noise.

Cosine:          λ(t) = −2·log tan(t_min + t·(t_max − t_min)), t_min/t_max chosen so λ ∈ [λ_min, λ_max]
Shifted cosine:  λ(t) + shift, shift = 2·log(d_ref / d) for data of resolution d (d_ref = 64).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogSNRSchedule:
    shift: float = 0.0
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0

    def __post_init__(self):
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")

    @classmethod
    def shifted_cosine(cls, resolution: int, reference: int = 64, **kw) -> "LogSNRSchedule":
        """The shift of simple diffusion for `resolution`-sized data (positive below the reference)."""
        return cls(shift=2 * math.log(reference / resolution), **kw)

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        t_min = math.atan(math.exp(-0.5 * self.logsnr_max))
        t_max = math.atan(math.exp(-0.5 * self.logsnr_min))
        t = torch.as_tensor(t, dtype=torch.float64)
        return (-2 * torch.log(torch.tan(t_min + t * (t_max - t_min))) + self.shift).float()

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
