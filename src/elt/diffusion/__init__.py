"""Diffusion framework (DiT-style, the paper's second setting): looped DiT, log-SNR schedules, loss, samplers."""
from .framework import DiffusionFramework, to_x0_eps
from .model import DiT
from .sampler import DiffusionSampler
from .schedules import LogSNRSchedule

__all__ = ["DiT", "DiffusionFramework", "DiffusionSampler", "LogSNRSchedule", "to_x0_eps"]
