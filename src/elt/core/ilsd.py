"""Intra-Loop Self Distillation (the paper's training objective), framework-agnostic.

    loss = L_GT(F_Lmax) + λ·L_GT(F_Lint) + (1-λ)·L_dist(F_Lint, stopgrad(F_Lmax))

Teacher and student come from ONE forward pass (the student is the exit after Lint loops of the
teacher's trajectory). Lint ~ U{Lmin, …, Lmax-1} once per step; λ falls linearly from 1 to 0 over
the run. The framework supplies `gt_loss(pred)` and `dist_loss(student, teacher)`; this module
never sees what the predictions are (logits, noise, velocities...). A framework may also supply
`student_loss(student, teacher, lam)` → (λ·L_GT + (1-λ)·L_dist, L_GT, L_dist) computing the two
student terms together (e.g. one softmax instead of two); the result must equal the separate terms.

`objective="vanilla"` is the paper's ablation: the teacher's ground-truth loss alone. The switches of
its loss ablation and beyond (defaults: the paper's) are `ILSDOptions`: the λ schedule (linear, cosine
or constant; its horizon as a fraction of training), each of the three terms on or off (with one of
the two student terms off, the other gets weight 1: λ only mixes them), Lint drawn once per step or
per example (then every exit Lmin … Lmax-1 is decoded and each example's student is its own exit),
and the distillation temperature (the framework's `dist_loss` takes it).
The loss parts come back as detached tensors, so a training loop reads them (a device sync) only when
it logs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..choices import LAMBDA_SCHEDULES, LINT_DISTRIBUTIONS, LINT_MODES, OBJECTIVES


@dataclass(frozen=True)
class ILSDOptions:
    """The objective's ablation switches; the defaults are the paper's."""
    lambda_schedule: str = "linear"  # linear | cosine | constant
    lambda_horizon: float = 1.0      # λ reaches 0 at this fraction of training (linear, cosine)
    lambda_value: float = 0.5        # λ of the constant schedule
    teacher_gt: bool = True          # L_GT(F_Lmax)
    student_gt: bool = True          # λ·L_GT(F_Lint)
    distill: bool = True             # (1-λ)·L_dist(F_Lint, stopgrad(F_Lmax))
    lint_mode: str = "step"          # how Lint is drawn: step (one per step) | example (one per example)
    lint_distribution: str = "uniform"  # uniform over Lmin..Lmax-1 (the paper's) | flops: p(L) ∝ 1/FLOPs(L)
    temperature: float = 1.0         # distillation temperature (the framework's dist_loss applies it)

    def __post_init__(self):
        if self.lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(f"lambda_schedule must be one of {LAMBDA_SCHEDULES}, got {self.lambda_schedule!r}")
        if self.lint_mode not in LINT_MODES:
            raise ValueError(f"lint_mode must be one of {LINT_MODES}, got {self.lint_mode!r}")
        if self.lint_distribution not in LINT_DISTRIBUTIONS:
            raise ValueError(f"lint_distribution must be one of {LINT_DISTRIBUTIONS}, got {self.lint_distribution!r}")
        if not (self.teacher_gt or self.student_gt or self.distill):
            raise ValueError("every ILSD term is off; turn on at least one of teacher_gt, student_gt, distill")


@dataclass
class ILSD:
    min_loops: int
    max_loops: int
    total_steps: int
    objective: str = "ilsd"
    options: ILSDOptions = ILSDOptions()
    costs: tuple[float, ...] | None = None  # FLOPs of a forward pass at L = 1 … Lmax (lint_distribution="flops")

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 1 <= self.min_loops <= self.max_loops:
            raise ValueError(f"need 1 <= min_loops <= max_loops, got {self.min_loops}, {self.max_loops}")
        if self.options.lint_distribution == "flops" and (self.costs is None or len(self.costs) < self.max_loops):
            raise ValueError("lint_distribution='flops' needs the forward pass's FLOPs at every L up to max_loops")

    def lint_probabilities(self) -> torch.Tensor:
        """p(Lint = L) for L = Lmin … Lmax-1: uniform, or ∝ 1/FLOPs(L) (every exit the same share of compute)."""
        n = self.max_loops - self.min_loops
        if self.options.lint_distribution == "uniform":
            return torch.full((n,), 1.0 / n, dtype=torch.float64)
        inverse = torch.tensor([1.0 / self.costs[L - 1] for L in range(self.min_loops, self.max_loops)],
                               dtype=torch.float64)
        return inverse / inverse.sum()

    @property
    def distills(self) -> bool:
        o = self.options
        return self.objective == "ilsd" and self.min_loops < self.max_loops and (o.student_gt or o.distill)

    def lam(self, step: int) -> float:
        """λ, the student's mix of ground truth against distillation: from 1 at step 0 to 0 at the
        horizon (linearly or along a half cosine), or constant."""
        o = self.options
        if o.lambda_schedule == "constant":
            return o.lambda_value
        x = min(1.0, step / max(1.0, o.lambda_horizon * (self.total_steps - 1)))
        return 1.0 - x if o.lambda_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * x))

    def mix(self, step: int) -> float:
        """The λ in use: the schedule's when both student terms are on, else 1 (ground truth alone)
        or 0 (distillation alone)."""
        o = self.options
        return self.lam(step) if o.student_gt and o.distill else float(o.student_gt)

    def draw_lint(self, generator: torch.Generator | None = None, batch: int = 1) -> int | torch.Tensor | None:
        """Lint ~ U{Lmin, …, Lmax-1}: one int per step, or (lint_mode="example") one per example as a
        LongTensor (batch,); None when nothing is distilled."""
        if not self.distills:
            return None
        count = batch if self.options.lint_mode == "example" else 1
        if self.options.lint_distribution == "uniform":
            lint = torch.randint(self.min_loops, self.max_loops, (count,), generator=generator)
        else:
            lint = self.min_loops + torch.multinomial(self.lint_probabilities(), count, replacement=True,
                                                      generator=generator)
        return lint if self.options.lint_mode == "example" else int(lint)

    def exits(self, lint: int | torch.Tensor | None) -> tuple[int, ...]:
        if lint is None:
            return ()
        return tuple(range(self.min_loops, self.max_loops)) if torch.is_tensor(lint) else (lint,)

    def student(self, outputs: dict[int, torch.Tensor], lint: int | torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """The student prediction: the exit at Lint, or per example its own exit (`rows[i]` is the
        example of prediction row i, for frameworks whose predictions are not one row per example)."""
        if not torch.is_tensor(lint):
            return outputs[lint]
        stacked = torch.stack([outputs[l] for l in range(self.min_loops, self.max_loops)])
        per_row = rows is not None and len(rows) == stacked.shape[1] != len(lint)
        which = (lint[rows] if per_row else lint).to(stacked.device) - self.min_loops
        return stacked[which, torch.arange(stacked.shape[1], device=stacked.device)]

    def __call__(
        self,
        outputs: dict[int, torch.Tensor],
        lint: int | torch.Tensor | None,
        step: int,
        gt_loss: Callable[[torch.Tensor], torch.Tensor],
        dist_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        student_loss: Callable | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, its parts as detached tensors: loss, loss_teacher and, when distilling,
        loss_student and loss_dist). `student_loss`, the fused λ-mix, is used only when both student
        terms are on."""
        o = self.options
        teacher = outputs[self.max_loops]
        loss_teacher = gt_loss(teacher)
        total = loss_teacher if o.teacher_gt or lint is None else torch.zeros((), device=teacher.device)
        if lint is None:
            return total, {"loss": total.detach(), "loss_teacher": loss_teacher.detach()}
        lam = self.mix(step)
        student = self.student(outputs, lint, rows)
        if student_loss is not None and o.student_gt and o.distill:
            combined, loss_student, loss_dist = student_loss(student, teacher.detach(), lam)
            total = total + combined
        else:  # a switched-off term is still reported, but computed without a graph (no backward cost)
            grad = torch.is_grad_enabled()
            with torch.set_grad_enabled(grad and o.student_gt):
                loss_student = gt_loss(student)
            with torch.set_grad_enabled(grad and o.distill):
                loss_dist = dist_loss(student, teacher.detach())  # stop-gradient on the teacher only here
            if o.student_gt:
                total = total + lam * loss_student
            if o.distill:
                total = total + (1.0 - lam) * loss_dist
        return total, {"loss": total.detach(), "loss_teacher": loss_teacher.detach(),
                       "loss_student": loss_student.detach(), "loss_dist": loss_dist.detach()}
