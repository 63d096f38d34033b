"""Intra-Loop Self Distillation (the paper's training objective), framework-agnostic.

    loss = L_GT(F_Lmax) + λ·L_GT(F_Lint) + (1-λ)·L_dist(F_Lint, stopgrad(F_Lmax))

Teacher and student come from ONE forward pass (the student is the exit after Lint loops of the
teacher's trajectory). Lint ~ U{Lmin, …, Lmax-1} once per step; λ falls linearly from 1 to 0 over
the run. The framework supplies `gt_loss(pred)` and `dist_loss(student, teacher)`; this module
never sees what the predictions are (logits, noise, velocities...). A framework may also supply
`student_loss(student, teacher, lam)` → (λ·L_GT + (1-λ)·L_dist, L_GT, L_dist) computing the two
student terms together (e.g. one softmax instead of two); the result must equal the separate terms.

`objective="vanilla"` is the paper's ablation: the teacher's ground-truth loss alone.
The loss parts come back as detached tensors, so a training loop reads them (a device sync) only when
it logs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..choices import OBJECTIVES


@dataclass
class ILSD:
    min_loops: int
    max_loops: int
    total_steps: int
    objective: str = "ilsd"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 1 <= self.min_loops <= self.max_loops:
            raise ValueError(f"need 1 <= min_loops <= max_loops, got {self.min_loops}, {self.max_loops}")

    @property
    def distills(self) -> bool:
        return self.objective == "ilsd" and self.min_loops < self.max_loops

    def lam(self, step: int) -> float:
        """λ: 1 at step 0, linearly to 0 at the last step."""
        return max(0.0, 1.0 - step / max(1, self.total_steps - 1))

    def draw_lint(self, generator: torch.Generator | None = None) -> int | None:
        """Lint ~ U{Lmin, …, Lmax-1}; None when nothing is distilled."""
        if not self.distills:
            return None
        return int(torch.randint(self.min_loops, self.max_loops, (1,), generator=generator))

    def exits(self, lint: int | None) -> tuple[int, ...]:
        return () if lint is None else (lint,)

    def __call__(
        self,
        outputs: dict[int, torch.Tensor],
        lint: int | None,
        step: int,
        gt_loss: Callable[[torch.Tensor], torch.Tensor],
        dist_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        student_loss: Callable | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, its parts as detached tensors: loss, loss_teacher and, when distilling,
        loss_student and loss_dist)."""
        teacher = outputs[self.max_loops]
        loss_teacher = gt_loss(teacher)
        if lint is None:
            return loss_teacher, {"loss": loss_teacher.detach(), "loss_teacher": loss_teacher.detach()}
        lam = self.lam(step)
        student = outputs[lint]
        if student_loss is None:
            loss_student = gt_loss(student)
            loss_dist = dist_loss(student, teacher.detach())  # stop-gradient on the teacher only here
            total = loss_teacher + lam * loss_student + (1.0 - lam) * loss_dist
        else:
            combined, loss_student, loss_dist = student_loss(student, teacher.detach(), lam)
            total = loss_teacher + combined
        return total, {"loss": total.detach(), "loss_teacher": loss_teacher.detach(),
                       "loss_student": loss_student.detach(), "loss_dist": loss_dist.detach()}
