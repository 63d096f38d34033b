"""Diffusion training (the paper's DiT setting): noising, one prediction target, sigmoid-weighted MSE for both
ILSD terms, label dropout.

Per example: t ~ U[0, 1) (stratified across the batch), ε ~ N(0, I), x_t = α_t·x₀ + σ_t·ε. The
network predicts one of ε, x₀ or v = α_t·ε − σ_t·x₀; the others follow from x_t (see `to_x0_eps`).
The loss is the sigmoid weighting of Kingma & Gao (2023) on the ε-MSE, w(λ) = sigmoid(b − λ),
expressed in the prediction's own space: ‖ε̂−ε‖² = α²‖v̂−v‖² = e^λ‖x̂₀−x₀‖². The ILSD distillation
term is the same weighted MSE with the teacher's (detached) prediction as the target.
"""
from __future__ import annotations

import torch

from .schedules import LogSNRSchedule

from ..choices import PREDICTIONS


def to_x0_eps(pred: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction: str):
    """The network's prediction → (x̂₀, ε̂). alpha/sigma broadcast against x_t."""
    if prediction == "v":
        return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred
    if prediction == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if prediction == "x0":
        return pred, (x_t - alpha * pred) / sigma
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1))).to(like)


class DiffusionFramework:
    def __init__(self, schedule: LogSNRSchedule, num_classes: int, prediction: str = "v",
                 weight_bias: float = -3.0, label_dropout: float = 0.1):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.schedule, self.prediction, self.weight_bias = schedule, prediction, weight_bias
        self.null_class, self.label_dropout = num_classes, label_dropout

    def target(self, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return {"v": alpha * eps - sigma * x0, "eps": eps, "x0": x0}[self.prediction]

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-example weight on the prediction-space MSE: sigmoid(b − λ) times ‖ε̂−ε‖²/‖pred−target‖²."""
        lam = self.schedule.logsnr(t)
        to_eps = {"v": torch.sigmoid(lam), "eps": torch.ones_like(lam), "x0": torch.exp(lam)}[self.prediction]
        return torch.sigmoid(self.weight_bias - lam) * to_eps

    def corrupt(self, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        """Returns ((x_t, t, labels_in), target, weight): the network's inputs, the regression target
        and the per-example loss weight."""
        b = x0.shape[0]
        t = (torch.rand(1, generator=generator) + torch.arange(b) / b) % 1.0  # stratified: lower variance
        t = t[torch.randperm(b, generator=generator)]
        eps = torch.randn(x0.shape, generator=generator)
        alpha, sigma = (_expand(v, x0) for v in self.schedule.alpha_sigma(t))
        x_t = alpha * x0 + sigma * eps
        drop = torch.rand(b, generator=generator) < self.label_dropout
        labels_in = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return (x_t, t, labels_in), self.target(x0, eps, alpha, sigma), self.weight(t)

    def loss_weight(self, weight: torch.Tensor) -> float:
        """How many terms the losses average over (examples): splits a batch exactly."""
        return float(weight.shape[0])

    def head_kwargs(self, weight: torch.Tensor) -> dict:
        return {}

    def rows(self, weight: torch.Tensor) -> torch.Tensor:
        """The example of each prediction row: one row per example."""
        return torch.arange(weight.shape[0], device=weight.device)

    def weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        per_example = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return (weight.to(per_example) * per_example).mean()

    def gt_loss(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.weighted_mse(pred, target, weight)

    def dist_loss(self, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The same weighted MSE with the (already detached) teacher as the target."""
        return self.weighted_mse(student, teacher, weight)
