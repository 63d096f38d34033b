"""The HTTP service's scheduling policy (`elt api`): one bounded queue of requests, admission control
against the latency SLO, and the choice of each batch and its loop count. Pure Python, driven by an
injectable clock (the tests use a fake one); `api.Service` runs it with the real model.

For each batch the `Scheduler` picks the largest loop count whose latency (`LatencyModel`: measured on this
machine per batch size and corrected by what the batches served actually took) fits the time the oldest
request has left of the SLO and leaves each request queued behind it the time it needs at Lmin. A request
that pins `loops` gets exactly that. When even Lmin cannot answer a new request in time, it is refused at
once (a `Refusal`, which the HTTP layer turns into 503 with Retry-After).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Job:
    """One request: its labels, the loop count it pins (None: the scheduler's choice), its seed."""
    labels: list[int]
    loops: int | None
    seed: int
    arrived: float
    answer: Callable[[object], None] = lambda result: None  # called exactly once, from the worker
    size: int = field(init=False)

    def __post_init__(self):
        self.size = len(self.labels)


@dataclass
class Refusal:
    kind: str  # "queue_full" | "slo" | "shutdown": the metrics label
    reason: str
    retry_after: int  # whole seconds, ≥ 1


def nonmonotone(table: dict[tuple[int, int], float]) -> list[tuple[int, int]]:
    """The cells (batch, L) of a latency table that take less time than a cell of fewer loops at the same
    batch, or than a smaller batch at the same loops: a table measured on a busy machine can hold such."""
    return sorted({(b, L) for (b, L), t in table.items() for (b2, L2), t2 in table.items()
                   if t < t2 and ((b2 == b and L2 < L) or (L2 == L and b2 < b))})


def monotone_envelope(table: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    """The smallest table above `table` that never gets faster with more loops or a larger batch."""
    out = dict(table)
    for (b, L) in sorted(out):  # ascending batch, then loops: both predecessors are final when a cell is visited
        before = [out[k] for k in ((b, L - 1),) if k in out] + [out[k] for k in out if k[1] == L and k[0] < b]
        out[(b, L)] = max([out[(b, L)], *before])
    return out


class LatencyModel:
    """Seconds to sample a batch of `b` at `L` loops: measured once per batch size (powers of two up to
    the largest batch) and loop count, linearly interpolated between measured sizes, and scaled by a
    running correction: the ratio of what batches really took to what the table said (a busy machine
    is slower than the quiet one the table was measured on)."""

    def __init__(self, table: dict[tuple[int, int], float]):
        self.table = dict(table)
        self.sizes = sorted({b for b, _ in table})
        self.correction = 1.0

    def __call__(self, loops: int, batch: int) -> float:
        sizes = self.sizes
        hi = next((s for s in sizes if s >= batch), sizes[-1])
        lo = max((s for s in sizes if s <= batch), default=sizes[0])
        t_hi, t_lo = self.table[(hi, loops)], self.table[(lo, loops)]
        t = t_lo if hi == lo else t_lo + (t_hi - t_lo) * (batch - lo) / (hi - lo)
        if batch > hi:  # beyond the largest measured size: per-sample cost of the largest
            t = t_hi * batch / hi
        return t * self.correction

    def observe(self, loops: int, batch: int, seconds: float) -> None:
        predicted = self(loops, batch) / self.correction
        ratio = min(max(seconds / predicted, 0.5), 4.0)
        self.correction = 0.8 * self.correction + 0.2 * ratio


class Scheduler:
    """The queue, admission control and the choice of batch and loop count.

    `latency(L, b)` → seconds; `loops` the loop counts the service may choose (ascending); `slo` the
    SLO in seconds (None: a fixed service at `loops[-1]`, refusing only when the queue is full).
    Plans use `headroom` × the SLO: the rest covers what the latency table does not hold (HTTP,
    encoding the images, the event loop)."""

    def __init__(self, latency: Callable[[int, int], float], loops: list[int], max_batch: int, max_queue: int,
                 slo: float | None, clock: Callable[[], float] = time.monotonic, headroom: float = 0.9):
        self.latency, self.loops, self.max_batch, self.max_queue = latency, sorted(loops), max_batch, max_queue
        self.slo, self.clock = slo, clock
        self.plan = None if slo is None else headroom * slo  # the time a plan may use
        self.queue: deque[Job] = deque()
        self.busy_until = 0.0  # when the batch being computed should end (clock time)

    def depth(self) -> int:
        return sum(j.size for j in self.queue)

    def _backlog(self, jobs):
        """(job, seconds to serve it and every job before it), for `jobs` in queue order at their cheapest
        loop count (a pinned job at its pin), in batches of up to max_batch samples of one loop count."""
        groups: dict[int | None, int] = {}
        cost = 0.0
        for j in jobs:
            loops = j.loops if j.loops is not None else self.loops[0]
            before = groups.get(j.loops, 0)
            groups[j.loops] = before + j.size
            cost += self._group_cost(loops, before + j.size) - self._group_cost(loops, before)
            yield j, cost

    def _group_cost(self, loops: int, samples: int) -> float:
        full, rest = divmod(samples, self.max_batch)
        return full * self.latency(loops, self.max_batch) + (self.latency(loops, rest) if rest else 0.0)

    def _batches_ahead(self, extra: Job) -> float:
        """Seconds until `extra` would be answered if every queued batch ran at its cheapest loop count."""
        return max(cost for _, cost in self._backlog([*self.queue, extra]))

    def submit(self, job: Job) -> Refusal | None:
        """Queue `job`, or say why not (the queue is full; no loop count can answer it within the SLO)."""
        now = self.clock()
        if self.depth() + job.size > self.max_queue:
            wait = max(self.busy_until - now, 0.0) + self._batches_ahead(job)
            return Refusal("queue_full", f"the queue is full ({self.max_queue} samples)", max(1, math.ceil(wait)))
        if self.slo is not None:
            finish = max(self.busy_until - now, 0.0) + self._batches_ahead(job)
            if finish > self.plan:
                return Refusal("slo", f"even L={job.loops or self.loops[0]} cannot answer within the SLO "
                               f"({1000 * self.slo:.0f} ms; about {1000 * finish:.0f} ms now)",
                               max(1, math.ceil(finish - self.plan)))
        self.queue.append(job)
        return None

    def next_batch(self) -> tuple[list[Job], int] | None:
        """The next batch (the oldest job and the queued jobs of the same loop pin, up to max_batch
        samples) and its loop count; None when the queue is empty."""
        if not self.queue:
            return None
        now = self.clock()
        head = self.queue[0]
        batch, samples = [], 0
        for j in list(self.queue):
            if j.loops == head.loops and samples + j.size <= self.max_batch:
                batch.append(j)
                samples += j.size
        for j in batch:
            self.queue.remove(j)
        if head.loops is not None:
            loops = head.loops
        elif self.slo is None:
            loops = self.loops[-1]
        else:  # the largest loop count that answers the oldest request in time and leaves every queued one its own
            left = min(head.arrived + self.plan - now, self._slack(now))
            fitting = [L for L in self.loops if self.latency(L, samples) <= left]
            loops = fitting[-1] if fitting else self.loops[0]
        self.busy_until = now + self.latency(loops, samples)
        return batch, loops

    def _slack(self, now: float) -> float:
        """Seconds the batch about to run may take so that every job still queued is answered in time when
        served after it, in order, at its cheapest loop count (the assumption admission made). Under a
        backlog this is what stops one batch from spending the time of the requests behind it."""
        return min((j.arrived + self.plan - now - cost for j, cost in self._backlog(self.queue)), default=math.inf)
