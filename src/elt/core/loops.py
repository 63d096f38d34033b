"""Loop policies for sampling: how many loops the network runs at each sampling step.

The paper uses one L for every step (`LoopSchedule.constant`). ILSD makes every intermediate loop
a usable model, so a sampler can also take
  * a per-step schedule — an explicit list, or a named family resolved for the sampler's K steps:
    `ramp:A:B` (linear from A loops at the first step to B at the last), `split:A:B[:F]` (A loops for
    the first fraction F of the steps, default ½, then B);
  * `AdaptiveLoops`: per example and per step, loop until the prediction stops changing.
These objects are kept apart from samplers and networks (as diffusers keeps schedulers apart).
`schedule_family` builds the schedules of one total loop count that the compute-optimal search
compares (`elt schedules`).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..choices import BEYOND_LMAX, SCHEDULE_SYNTAX
from .looped import check_loops


class LoopSchedule:
    """One loop count per sampling step. Build with `constant(L)`, a per-step list, `ramp(a, b)`,
    `split(a, b, f)` or `parse(text)`; `per_step(K)` resolves it for a sampler of K steps."""

    def __init__(self, per_step: Sequence[int] | None = None, constant: int | None = None,
                 family: tuple | None = None):
        if sum(x is not None for x in (per_step, constant, family)) != 1:
            raise ValueError("give exactly one of a per-step list, a constant loop count or a family")
        self._constant, self._family = constant, family
        self._per_step = list(per_step) if per_step is not None else None
        if self._per_step is not None and not self._per_step:
            raise ValueError("a per-step loop schedule needs at least one entry")
        for loops in self._per_step or ([constant] if constant is not None else list(family[1:3])):
            check_loops(loops)
        if family is not None and family[0] == "split" and not 0 < family[3] < 1:
            raise ValueError(f"split fraction must be in (0, 1), got {family[3]}")

    @classmethod
    def constant(cls, loops: int) -> "LoopSchedule":
        return cls(constant=loops)

    @classmethod
    def ramp(cls, start: int, end: int) -> "LoopSchedule":
        return cls(family=("ramp", start, end))

    @classmethod
    def split(cls, first: int, then: int, fraction: float = 0.5) -> "LoopSchedule":
        return cls(family=("split", first, then, float(fraction)))

    @classmethod
    def parse(cls, text: str) -> "LoopSchedule":
        """'4', '1,2,3,4', 'ramp:1:4', 'split:4:2:0.25' (see SCHEDULE_SYNTAX); one clear error otherwise."""
        text = str(text).strip()
        try:
            if text.startswith(("ramp:", "split:")):
                kind, *args = text.split(":")
                if kind == "ramp" and len(args) == 2:
                    return cls.ramp(int(args[0]), int(args[1]))
                if kind == "split" and len(args) in (2, 3):
                    return cls.split(int(args[0]), int(args[1]), float(args[2]) if len(args) == 3 else 0.5)
                raise ValueError("wrong number of fields")
            parts = [int(p) for p in text.replace("-", ",").split(",") if p.strip()]
            if len(parts) == 1:
                return cls.constant(parts[0])
            return cls(per_step=parts)
        except ValueError as e:
            raise ValueError(f"bad loop schedule {text!r} ({e}); give {SCHEDULE_SYNTAX}") from None

    def per_step(self, total_steps: int) -> list[int]:
        """The loop count of every step of a K-step sampler."""
        k = total_steps
        if self._constant is not None:
            return [self._constant] * k
        if self._per_step is not None:
            if len(self._per_step) != k:
                raise ValueError(f"loop schedule has {len(self._per_step)} entries for {k} sampling steps; "
                                 f"give one loop count per step (or a ramp:/split: schedule)")
            return list(self._per_step)
        kind, a, b = self._family[:3]
        if kind == "ramp":
            return [math.floor(a + (b - a) * i / max(1, k - 1) + 0.5) for i in range(k)]  # halves round up
        first = min(k, max(0, round(self._family[3] * k)))
        return [a] * first + [b] * (k - first)

    def loops_at(self, step: int, total_steps: int) -> int:
        return self.per_step(total_steps)[step]

    def total_loops(self, total_steps: int) -> int:
        return sum(self.per_step(total_steps))

    def __repr__(self) -> str:
        if self._constant is not None:
            return f"L{self._constant}"
        if self._per_step is not None:  # run-length: L1x13-3x11-4 for 1 (13 steps), 3 (11 steps), 4
            runs = [(v, len(list(g))) for v, g in itertools.groupby(self._per_step)]
            return "L" + "-".join(f"{v}x{n}" if n > 1 else str(v) for v, n in runs)
        kind, a, b = self._family[:3]
        return f"ramp{a}to{b}" if kind == "ramp" else f"split{a}to{b}at{self._family[3]:g}"

    def spec(self) -> str:
        """The text `parse` turns back into this schedule."""
        if self._constant is not None:
            return str(self._constant)
        if self._per_step is not None:
            return ",".join(map(str, self._per_step))
        kind, a, b = self._family[:3]
        return f"ramp:{a}:{b}" if kind == "ramp" else f"split:{a}:{b}:{self._family[3]:g}"


def quantize(profile: Sequence[float], total: int, lo: int, hi: int) -> list[int]:
    """Integer loop counts following a real-valued per-step profile whose sum is exactly `total`
    (cumulative rounding, then ordered like the profile so a ramp stays monotone), each within [lo, hi]."""
    k = len(profile)
    if not lo * k <= total <= hi * k:
        raise ValueError(f"{total} loops over {k} steps cannot stay within {lo}..{hi} loops per step")
    scale = total / sum(profile)
    cum, out, prev = 0.0, [], 0
    for p in profile:
        cum += p * scale
        cur = round(cum)
        out.append(cur - prev)
        prev = cur
    # Clamp into [lo, hi] and hand the excess to the nearest steps that still have room.
    out = [min(hi, max(lo, v)) for v in out]
    diff = total - sum(out)
    order = sorted(range(k), key=lambda i: -profile[i] if diff > 0 else profile[i])
    while diff:
        for i in order:
            if diff > 0 and out[i] < hi:
                out[i] += 1
                diff -= 1
            elif diff < 0 and out[i] > lo:
                out[i] -= 1
                diff += 1
            if not diff:
                break
    trend = 1 if profile[-1] >= profile[0] else -1  # ties: follow the profile's overall direction
    ranked = sorted(range(k), key=lambda i: (profile[i], trend * i))
    result = [0] * k
    for i, v in zip(ranked, sorted(out)):
        result[i] = v
    return result


def schedule_family(mean_loops: float, steps: int, lo: int, hi: int) -> dict[str, LoopSchedule]:
    """Schedules with the same total loops, round(mean_loops·steps), as constant L = mean_loops:
    increasing and decreasing linear ramps, and front- and back-loaded two-level splits, each
    spanning as wide a range within [lo, hi] as the mean allows. Names say the shape; equal
    schedules (e.g. at the edges of the range) are kept once."""
    total = round(mean_loops * steps)
    spread = min(mean_loops - lo, hi - mean_loops)
    out: dict[str, LoopSchedule] = {}
    if spread <= 0 or steps < 2:
        return out
    ramp = [mean_loops - spread + 2 * spread * i / (steps - 1) for i in range(steps)]
    half = steps // 2
    # Two levels a step apart in each direction (as wide as the range allows), equal halves.
    step_up = [mean_loops + spread] * half + [mean_loops - spread] * (steps - half)
    candidates = {
        "increasing": ramp,
        "decreasing": ramp[::-1],
        "front-loaded": step_up,
        "back-loaded": step_up[::-1],
    }
    seen = set()
    for name, profile in candidates.items():
        per_step = quantize([max(p, 1e-6) for p in profile], total, lo, hi)
        key = tuple(per_step)
        if key in seen or len(set(per_step)) == 1:
            continue
        seen.add(key)
        out[name] = LoopSchedule(per_step=per_step)
    return out


@dataclass
class AdaptiveLoops:
    """Per example and per sampling step: run loops until the head's output changes by less than
    `threshold` between two successive loops (the change is measured by the sampler: KL for token
    logits, relative RMS for diffusion predictions), never fewer than `min_loops` nor more than
    `max_loops`. Keeps the mean loops used across calls (`mean_loops`) for reports."""

    threshold: float
    min_loops: int
    max_loops: int

    def __post_init__(self):
        check_loops(self.min_loops)
        check_loops(self.max_loops)
        if self.min_loops > self.max_loops:
            raise ValueError(f"adaptive halting needs min_loops <= max_loops, got {self.min_loops} > {self.max_loops}")
        if not self.threshold >= 0:
            raise ValueError(f"adaptive halting threshold must be >= 0, got {self.threshold}")
        self.reset()

    def reset(self) -> None:
        self._steps: dict[int, list[float]] = {}  # step -> [loops summed, heads summed, examples]

    def record(self, step: int, loops_used: torch.Tensor, heads_used: torch.Tensor) -> None:
        acc = self._steps.setdefault(step, [0.0, 0.0, 0])
        acc[0] += float(loops_used.sum())
        acc[1] += float(heads_used.sum())
        acc[2] += loops_used.numel()

    def mean_at(self, step: int) -> tuple[float, float]:
        """(mean loops, mean head evaluations) per example at sampling step `step`, as run so far."""
        if step not in self._steps:
            raise ValueError("adaptive halting has not sampled yet: its compute is known only after a run")
        loops, heads, count = self._steps[step]
        return loops / count, heads / count

    @property
    def mean_loops(self) -> float:
        """Mean loops per example and step over everything sampled since the last reset."""
        total = sum(v[0] for v in self._steps.values())
        return total / max(1, sum(v[2] for v in self._steps.values()))

    def __repr__(self) -> str:
        return f"adaptive{self.threshold:g}_L{self.min_loops}to{self.max_loops}"


def per_step_counts(policy, steps: int) -> list[tuple[float, float]]:
    """(loops, head evaluations) of every sampling step: a schedule's, or what adaptive halting ran on
    average. Network FLOPs are linear in both, so `model.flops(loops, heads)` takes the means."""
    if isinstance(policy, AdaptiveLoops):
        return [policy.mean_at(k) for k in range(steps)]
    return [(float(L), 1.0) for L in as_policy(policy).per_step(steps)]


def check_sampling_loops(policy, steps: int, lmax: int, guidance_loops: int | None = None) -> None:
    """One clear error for a `policy` (anything `as_policy` takes) that loops far beyond what the model was
    trained for (a typo such as 40 for 4 would otherwise run ten times longer and give noise), or whose steps
    loop fewer times than the unconditional half of guidance would (`guidance_loops`)."""
    policy = as_policy(policy)
    if guidance_loops is not None:
        for L in ([policy] if isinstance(policy, AdaptiveLoops) else sorted(set(policy.per_step(steps)))):
            check_guidance_loops(guidance_loops, L)
    most = policy.max_loops if isinstance(policy, AdaptiveLoops) else max(policy.per_step(steps))
    limit = BEYOND_LMAX * lmax
    if most > limit:
        raise ValueError(f"loop count {most} is above {limit} ({BEYOND_LMAX}×Lmax: this model was trained at "
                         f"L <= {lmax}, and quality degrades far above it); use loop counts 1..{limit}")


def as_policy(policy) -> "LoopSchedule | AdaptiveLoops":
    """The one converter to a loop policy: an int (constant L), a spec text (`LoopSchedule.parse`), a
    per-step list, a LoopSchedule or an AdaptiveLoops → a LoopSchedule or an AdaptiveLoops."""
    if isinstance(policy, (LoopSchedule, AdaptiveLoops)):
        return policy
    if isinstance(policy, bool):
        raise ValueError(f"a loop count must be an integer, got {policy!r}")
    if isinstance(policy, int):
        return LoopSchedule.constant(policy)
    if isinstance(policy, str):
        return LoopSchedule.parse(policy)
    return LoopSchedule(per_step=list(policy))


def loops_at(policy, step: int, steps: int) -> "int | AdaptiveLoops":
    """The loop count of one sampling step (adaptive halting decides inside the network call)."""
    return policy if isinstance(policy, AdaptiveLoops) else policy.loops_at(step, steps)


def run_policy(model, inputs: tuple, step_policy, step: int = 0,
               change: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               groups: int = 1, guidance_loops: int | None = None, **head_kw) -> torch.Tensor:
    """The samplers' one call into the network at sampling step `step`: `step_policy` is what `loops_at`
    gives — a loop count, or adaptive halting (an AdaptiveLoops; `change(prev, cur)` gives one value per
    example). `groups` copies of each example lie in the batch back to back (guidance: conditional half,
    unconditional half); they stop together. `guidance_loops`: the unconditional half (the second group) runs
    that many loops while the conditional half runs the step's; they share the loops they have in common."""
    if guidance_loops is not None and groups == 2:
        check_guidance_loops(guidance_loops, step_policy)
        return model.forward_groups(*inputs, loops=[step_policy, guidance_loops], **head_kw)
    if not isinstance(step_policy, AdaptiveLoops):
        return model(*inputs, loops=step_policy, **head_kw)
    a = step_policy
    out, used, heads = model.forward_adaptive(*inputs, min_loops=a.min_loops, max_loops=a.max_loops,
                                              threshold=a.threshold, change=change, groups=groups, **head_kw)
    step_policy.record(step, used, heads)
    return out


def check_guidance_loops(guidance_loops: int, step_loops) -> None:
    """Guidance at fewer loops: the unconditional half runs 1 … the step's own loop count."""
    if isinstance(step_loops, AdaptiveLoops):
        raise ValueError("--guidance-loops with adaptive halting: halting decides both halves' loops together; use "
                         "a loop count or a schedule")
    check_loops(guidance_loops)
    if guidance_loops > step_loops:
        raise ValueError(f"--guidance-loops {guidance_loops} is above the {step_loops} loops of a sampling step: the "
                         f"unconditional half runs at most the conditional half's loops; give 1..{step_loops}")


def guided_counts(policy, steps: int, guidance_loops: int | None) -> list[tuple[float, float]]:
    """(loops, head evaluations) of every network evaluation of a guided sample: the conditional half's at
    each step, and the unconditional half's — the step's own, or `guidance_loops`."""
    counts = per_step_counts(policy, steps)
    return counts + ([(float(guidance_loops), 1.0)] * steps if guidance_loops is not None else counts)


def relative_rms_change(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """‖cur − prev‖ / ‖cur‖ per example (diffusion predictions)."""
    d = (cur.float() - prev.float()).flatten(1).norm(dim=1)
    return d / cur.float().flatten(1).norm(dim=1).clamp_min(1e-8)


def logits_kl_change(prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(softmax(cur) ‖ softmax(prev)) per example, logits (B, ..., V)."""
    lc, lp = cur.float().log_softmax(-1), prev.float().log_softmax(-1)
    kl = (lc.exp() * (lc - lp)).sum(-1)
    return kl.flatten(1).mean(1) if kl.ndim > 1 else kl


__all__ = ["LoopSchedule", "AdaptiveLoops", "schedule_family", "quantize", "as_policy", "loops_at", "run_policy",
           "per_step_counts", "relative_rms_change", "logits_kl_change"]
