"""Masked-token training: cosine mask schedule, corruption, and the two ILSD loss terms.

Training mask (MaskGIT's, which the paper keeps): per example r ~ U[0,1), γ(r) = cos(πr/2), ceil(γ·T) random positions
become [MASK]; 10% of labels become the null class; losses are means over masked positions — weighted means where
some positions count more (`position_weights`: a video's one motion token among its appearance tokens).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cosine_mask_ratio(r: torch.Tensor | float):
    """γ(r) = cos(π r / 2): 1 at r=0 (all masked), 0 at r=1."""
    if isinstance(r, torch.Tensor):
        return torch.cos(math.pi * r / 2)
    return math.cos(math.pi * r / 2)


class MaskedFramework:
    def __init__(self, codebook_size: int, num_classes: int, label_dropout: float = 0.1,
                 label_smoothing: float = 0.1, temperature: float = 1.0,
                 position_weights: torch.Tensor | None = None):
        self.mask_id = codebook_size
        self.null_class = num_classes
        self.label_dropout = label_dropout
        self.label_smoothing = label_smoothing
        self.temperature = temperature  # of the distillation softmaxes (1: the paper's)
        # (T,) weight of each position in the losses' means (None: every masked token counts once, the paper's)
        self.position_weights = position_weights

    def corrupt(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        """Mask ceil(γ(r)·T) random positions per example and drop labels.

        Returns ((inputs, labels_in), tokens, mask): the network's inputs, the targets, and mask True
        where a token was hidden.
        """
        b, t = tokens.shape
        r = torch.rand(b, generator=generator)
        n_masked = torch.ceil(cosine_mask_ratio(r) * t).clamp(1, t).long()
        ranks = torch.rand(b, t, generator=generator).argsort(dim=1).argsort(dim=1)
        mask = ranks < n_masked[:, None]
        inputs = torch.where(mask, torch.full_like(tokens, self.mask_id), tokens)
        drop = torch.rand(b, generator=generator) < self.label_dropout
        labels_in = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return (inputs, labels_in), tokens, mask

    def loss_weight(self, mask: torch.Tensor) -> float:
        """How many terms the losses average over (masked tokens, weighted): splits a batch exactly."""
        return float(mask.sum() if self.position_weights is None else self._weights(mask).sum())

    def _weights(self, mask: torch.Tensor) -> torch.Tensor:
        """The weight of each masked position, row-major as the head decodes them: (M,)."""
        return self.position_weights.to(mask.device)[mask.nonzero()[:, 1]]

    def _mean(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean over masked positions of per-position losses (M,), weighted by `position_weights`."""
        if self.position_weights is None:
            return values.mean()
        w = self._weights(mask).to(values.dtype)
        return (values * w).sum() / w.sum()

    def head_kwargs(self, mask: torch.Tensor) -> dict:
        """The losses only read masked positions: the head decodes only those (see `head`)."""
        return {"positions": mask}

    def rows(self, mask: torch.Tensor) -> torch.Tensor:
        """The example of each prediction row (the head decodes the masked positions, row-major)."""
        return mask.nonzero()[:, 0]

    def gt_loss(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (label-smoothed) on masked positions, mean over masked tokens."""
        if self.position_weights is None:
            return F.cross_entropy(_at(logits, mask), targets[mask], label_smoothing=self.label_smoothing)
        return self._mean(F.cross_entropy(_at(logits, mask), targets[mask], label_smoothing=self.label_smoothing,
                                          reduction="none"), mask)

    def dist_loss(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy against the teacher's full softmax on masked positions; at temperature
        T ≠ 1 both softmaxes see logits / T and the loss is scaled by T² (Hinton et al.), so its
        gradient keeps the scale of T = 1."""
        T = self.temperature
        p_teacher = (_at(teacher, mask) / T).softmax(dim=-1)
        return self._mean(-(p_teacher * (_at(student, mask) / T).log_softmax(dim=-1)).sum(dim=-1), mask) * T * T

    def student_loss(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                     lam: float):
        """λ·gt_loss + (1-λ)·dist_loss as one soft cross-entropy: both terms are −Σ q·log p(student),
        so the mixed target q = λ·smoothed one-hot + (1-λ)·p_teacher needs one log-softmax, not two.
        Returns (combined, gt_loss value, dist_loss value); the values are for logging. At a
        distillation temperature ≠ 1 the two terms need two log-softmaxes: computed separately."""
        if self.temperature != 1.0:
            gt, dist = self.gt_loss(student, targets, mask), self.dist_loss(student, teacher, mask)
            return lam * gt + (1 - lam) * dist, gt.detach(), dist.detach()
        logp = _at(student, mask).log_softmax(-1)
        p_teacher = _at(teacher, mask).softmax(-1)
        y = targets[mask][:, None]
        eps, vocab = self.label_smoothing, logp.shape[-1]
        q = ((1 - lam) * p_teacher + lam * eps / vocab).scatter_add_(1, y, torch.full(y.shape, lam * (1 - eps),
                                                                                        dtype=logp.dtype, device=logp.device))
        combined = self._mean(-(q * logp).sum(-1), mask)
        with torch.no_grad():
            gt = self._mean(-((1 - eps) * logp.gather(1, y)[:, 0] + eps * logp.mean(-1)), mask)
            dist = self._mean(-(p_teacher * logp).sum(-1), mask)
        return combined, gt, dist


def _at(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits at the masked positions: (B, T, V) → (M, V); logits the head decoded only there pass."""
    return logits[mask] if logits.shape[:-1] == mask.shape else logits
