"""Loop schedules for sampling: how many loops the network runs at each sampling step.

The paper uses one L for every step (`constant`); a schedule object keeps that choice apart from
the sampler so per-step schedules can be added without touching samplers or networks.
"""
from __future__ import annotations

from collections.abc import Sequence

from .looped import check_loops


class LoopSchedule:
    """One loop count per sampling step. Build with `LoopSchedule.constant(L)` or from a list."""

    def __init__(self, per_step: Sequence[int] | None = None, constant: int | None = None):
        if (per_step is None) == (constant is None):
            raise ValueError("give either a per-step list or a constant loop count")
        self._constant = constant
        self._per_step = list(per_step) if per_step is not None else None
        for loops in self._per_step or [constant]:
            check_loops(loops)

    @classmethod
    def constant(cls, loops: int) -> "LoopSchedule":
        return cls(constant=loops)

    @classmethod
    def coerce(cls, loops: "int | Sequence[int] | LoopSchedule") -> "LoopSchedule":
        if isinstance(loops, LoopSchedule):
            return loops
        if isinstance(loops, int):
            return cls.constant(loops)
        return cls(per_step=loops)

    def loops_at(self, step: int, total_steps: int) -> int:
        if self._constant is not None:
            return self._constant
        if len(self._per_step) != total_steps:
            raise ValueError(f"loop schedule has {len(self._per_step)} entries for {total_steps} sampling steps")
        return self._per_step[step]

    def total_loops(self, total_steps: int) -> int:
        return sum(self.loops_at(k, total_steps) for k in range(total_steps))

    def __repr__(self) -> str:
        return f"L{self._constant}" if self._constant is not None else "L" + "-".join(map(str, self._per_step))
