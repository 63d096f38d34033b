"""`elt api --run DIR`: an HTTP JSON service for one elastic checkpoint (FastAPI + uvicorn, optional
extra `elt[api]`) that keeps a latency objective under load by spending fewer loops.

    POST /generate   {"classes": [3, 5]} or {"n": 4}; optional "loops" or "budget_gflops", "seed"
    GET  /health     the run, the loop range, the objective, the queue
    GET  /metrics    Prometheus text: requests, latency, loops used, queue depth, refusals

Requests wait in one bounded queue and are served in batches by one worker thread. For each batch the
`Scheduler` picks the largest loop count whose latency, measured on this machine per batch size (and
corrected by what the batches served actually took), fits the time the oldest request has left of the
objective (`--slo-ms`) and leaves each request queued behind it the time it needs at Lmin. A request
that pins `loops` (or a GFLOPs budget) gets exactly that. When even Lmin cannot answer a new request in
time, it is refused at once: 503 with Retry-After. Every request gets exactly one answer; SIGTERM
stops taking requests and answers the ones queued before exiting.

Without `--slo-ms` the service is a plain batching server at one loop count (`--loops`, default Lmax):
the fixed baseline of `benchmarks/load.py`.
"""
from __future__ import annotations

import base64
import io
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger("elt")


# --------------------------------------------------------------------------------------------------
# The scheduling policy: pure Python, driven by an injectable clock (the tests use a fake one)
# --------------------------------------------------------------------------------------------------

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
    kind: str  # "queue_full" | "objective" | "shutdown": the metrics label
    reason: str
    retry_after: int  # whole seconds, ≥ 1


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
    objective in seconds (None: a fixed service at `loops[-1]`, refusing only when the queue is full).
    Plans use `headroom` × the objective: the rest covers what the latency table does not hold (HTTP,
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
        """Queue `job`, or say why not (the queue is full; no loop count can answer it within the objective)."""
        now = self.clock()
        if self.depth() + job.size > self.max_queue:
            wait = max(self.busy_until - now, 0.0) + self._batches_ahead(job)
            return Refusal("queue_full", f"the queue is full ({self.max_queue} samples)", max(1, math.ceil(wait)))
        if self.slo is not None:
            finish = max(self.busy_until - now, 0.0) + self._batches_ahead(job)
            if finish > self.plan:
                return Refusal("objective", f"even L={job.loops or self.loops[0]} cannot answer within the objective "
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


# --------------------------------------------------------------------------------------------------
# The model side: a worker thread that serves batches
# --------------------------------------------------------------------------------------------------

def _encode(images: np.ndarray, video: bool) -> list[str]:
    """uint8 (N, H, W, C) → base64 PNGs; clips (N, T, H, W, C) → base64 looping GIFs."""
    from PIL import Image

    out = []
    for x in images:
        frames = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in (x if video else [x])]
        buf = io.BytesIO()
        if video:
            frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=125, loop=0)
        else:
            frames[0].save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


class Service:
    """One run, its latency model, the scheduler and the worker thread; the HTTP layer only submits."""

    def __init__(self, run_dir, slo_ms: float | None = None, loops: int | None = None, max_batch: int = 32,
                 max_queue: int = 256, device: str = "cpu", progress: bool = True):
        from ..choices import VIDEO_DATASETS
        from ..engine.run import load_run

        if slo_ms is not None and slo_ms <= 0:
            raise ValueError(f"--slo-ms must be positive, got {slo_ms:g}")
        if max_batch < 1 or max_queue < max_batch:
            raise ValueError(f"--max-queue ({max_queue}) must be at least --max-batch ({max_batch}) and both ≥ 1")
        self.run = load_run(run_dir, device=device, sample_overrides=[f"sample.batch_size={max_batch}"])
        m = self.run.cfg.model
        self.min_loops, self.max_loops = m.min_loops, m.max_loops
        if loops is not None and not 1 <= loops <= m.max_loops:
            raise ValueError(f"--loops {loops} is outside 1..{m.max_loops} (this run's Lmax)")
        self.video = self.run.cfg.data.dataset in VIDEO_DATASETS
        self.slo = None if slo_ms is None else slo_ms / 1000
        self.fixed = loops if loops is not None else (None if slo_ms is not None else m.max_loops)
        s = self.run.cfg.sample
        self.steps, self.guidance = s.steps, s.guidance
        # every loop count a request may pin is measured; the service itself chooses among Lmin … Lmax
        self.latency = LatencyModel(self._measure(list(range(1, m.max_loops + 1)), max_batch, progress))
        choices = list(range(m.min_loops, m.max_loops + 1)) if self.fixed is None else [self.fixed]
        self.scheduler = Scheduler(self.latency, choices, max_batch, max_queue, self.slo)
        self.gflops = self._gflops()
        self.metrics = _Metrics(self)
        self._cond = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._serve, name="elt-api-worker", daemon=True)
        self._worker.start()

    def _measure(self, loops: list[int], max_batch: int, progress: bool) -> dict:
        from ..engine.frontier import latencies

        sizes = sorted({min(2 ** k, max_batch) for k in range(max_batch.bit_length() + 1)})
        log.info("measuring sampling latency at batch sizes %s and L = %s (cached in %s)", sizes, loops,
                 self.run.path / "latency.json")
        table = {}
        for b in sizes:
            ms = latencies(self.run, [{"spec": str(L)} for L in loops], self.steps, self.guidance,
                           progress=progress, batch=b)
            table.update({(b, L): ms[str(L)] * b / 1000 for L in loops})
        return table

    def _gflops(self) -> dict[int, float]:
        from ..choices import BEYOND_LMAX
        from ..engine.sampling import gflops_per_sample

        return {L: gflops_per_sample(self.run, L, self.steps, self.guidance)
                for L in range(1, self.max_loops + BEYOND_LMAX + 1)}

    def loops_for_budget(self, gflops: float) -> int:
        """The largest loop count up to Lmax whose GFLOPs per sample fit `gflops`."""
        fitting = [L for L, g in self.gflops.items() if g <= gflops and L <= self.max_loops]
        if not fitting:
            raise ValueError(f"budget_gflops: {gflops:g} is below the cheapest loop count's "
                             f"{self.gflops[1]:.4g} GFLOPs per sample; raise it")
        return max(fitting)

    def submit(self, job: Job) -> Refusal | None:
        with self._cond:
            if self._stopping:
                return Refusal("shutdown", "the service is shutting down", 5)
            refusal = self.scheduler.submit(job)
            if refusal is None:
                self._cond.notify()
            self.metrics.queue_depth.set(self.scheduler.depth())
        if refusal is not None:
            self.metrics.refusals.labels(reason=refusal.kind).inc()
        return refusal

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self.scheduler.queue and not self._stopping:
                    self._cond.wait()
                if not self.scheduler.queue:  # stopping, and every queued job answered
                    return
                jobs, loops = self.scheduler.next_batch()
                self.metrics.queue_depth.set(self.scheduler.depth())
            try:
                self._answer(jobs, loops)
            except Exception as e:  # a failed batch answers its jobs with the error; the service goes on
                log.exception("batch of %d jobs at L=%d failed", len(jobs), loops)
                with self._cond:
                    self.scheduler.busy_until = time.monotonic()  # free again: admission must not wait on it
                for j in jobs:
                    j.answer({"error": f"{type(e).__name__}: {e}"})

    def _answer(self, jobs: list[Job], loops: int) -> None:
        import torch

        from ..engine.sampling import generate

        labels = torch.tensor([c for j in jobs for c in j.labels], dtype=torch.long)
        started = time.monotonic()
        images = generate(self.run, loops, labels, jobs[0].seed)
        seconds = time.monotonic() - started
        with self._cond:
            self.scheduler.busy_until = time.monotonic()  # the worker is free again
            self.latency.observe(loops, len(labels), seconds)
        results, k = [], 0
        for j in jobs:
            part = images[k: k + j.size]
            k += j.size
            results.append({"images": _encode(part, self.video), "format": "gif" if self.video else "png",
                            "labels": j.labels, "loops": loops, "gflops_per_sample": round(self.gflops[loops], 4),
                            "queue_ms": round(1000 * (started - j.arrived), 1), "compute_ms": round(1000 * seconds, 1),
                            "batch_size": len(labels), "batch_seed": jobs[0].seed, "checkpoint_step": self.run.step})
        done = time.monotonic()
        for j, result in zip(jobs, results):
            result["total_ms"] = round(1000 * (done - j.arrived), 1)
            self.metrics.loops_used.observe(loops)
            j.answer(result)

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer every queued one, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._worker.join(timeout)

    def health(self) -> dict:
        lat = {f"L{L}": round(1000 * self.latency(L, self.scheduler.max_batch), 2) for L in self.scheduler.loops}
        return {"status": "stopping" if self._stopping else "ok", "run": self.run.cfg.name,
                "checkpoint_step": self.run.step, "classes": self.run.class_names,
                "loops": {"min": self.min_loops, "max": self.max_loops, "served": self.scheduler.loops},
                "fixed_loops": self.fixed, "slo_ms": None if self.slo is None else 1000 * self.slo,
                "max_batch": self.scheduler.max_batch, "max_queue": self.scheduler.max_queue,
                "queue": self.scheduler.depth(), "batch_ms_at_max_batch": lat,
                "latency_correction": round(self.latency.correction, 3),
                "sampling": {"steps": self.steps, "guidance": self.guidance}}


class _Metrics:
    """Prometheus metrics in a registry of the service's own (several services per process in tests)."""

    def __init__(self, service: Service):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("elt_requests", "requests answered, by HTTP status", ["status"],
                                registry=self.registry)
        self.latency = Histogram("elt_request_seconds", "arrival to answer of served requests",
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2, 4, 8, 16, 32, 64),
                                 registry=self.registry)
        self.loops_used = Histogram("elt_loops_used", "loop count each served request got",
                                    buckets=tuple(range(1, service.max_loops + 1)), registry=self.registry)
        self.queue_depth = Gauge("elt_queue_depth", "samples waiting", registry=self.registry)
        self.refusals = Counter("elt_refusals", "requests refused with 503, by reason", ["reason"],
                                registry=self.registry)


# --------------------------------------------------------------------------------------------------
# The HTTP layer
# --------------------------------------------------------------------------------------------------

def build_app(service: Service):
    """The FastAPI app over `service`; its shutdown drains the queue."""
    import asyncio
    from contextlib import asynccontextmanager

    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
        from pydantic import BaseModel, ConfigDict, Field
    except ImportError:
        raise ValueError("the HTTP service needs fastapi, uvicorn and prometheus-client: "
                         "pip install -e '.[api]'") from None

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        classes: list[int] | None = Field(None, description="class ids, one sample each")
        n: int | None = Field(None, ge=1, description="class-balanced samples (instead of classes)")
        loops: int | None = Field(None, ge=1, description="pin the loop count (default: the service's choice)")
        budget_gflops: float | None = Field(None, gt=0, description="largest loop count within this many GFLOPs")
        seed: int = 0

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = FastAPI(title=f"elt — {service.run.cfg.name}", lifespan=lifespan)
    metrics = service.metrics

    def problem(status: int, detail: str, headers: dict | None = None):
        metrics.requests.labels(status=str(status)).inc()
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return problem(422, f"{where}: {first.get('msg', 'invalid')}")

    async def generate(req: GenerateRequest):
        arrived = time.monotonic()
        num = len(service.run.class_names)
        if (req.classes is None) == (req.n is None):
            return problem(422, "classes, n: give exactly one (class ids, or a class-balanced count)")
        if req.classes is not None:
            bad = [c for c in req.classes if not 0 <= c < num]
            if bad or not req.classes:
                return problem(422, f"classes: ids must be in 0..{num - 1} and at least one, got {req.classes}")
            labels = list(req.classes)
        else:
            labels = [i % num for i in range(req.n)]
        if len(labels) > service.scheduler.max_batch:
            return problem(422, f"{'n' if req.n else 'classes'}: at most {service.scheduler.max_batch} samples "
                                "per request (the service's --max-batch)")
        if req.loops is not None and req.budget_gflops is not None:
            return problem(422, "loops, budget_gflops: give at most one")
        loops = req.loops
        if loops is not None and not 1 <= loops <= service.max_loops:
            return problem(422, f"loops: {loops} is outside 1..{service.max_loops} (this model's Lmax)")
        if req.budget_gflops is not None:
            try:
                loops = service.loops_for_budget(req.budget_gflops)
            except ValueError as e:
                return problem(422, str(e))
        if service.fixed is not None and loops is None:
            loops = service.fixed
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def answer(result):
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))

        refusal = service.submit(Job(labels, loops, req.seed, arrived, answer))
        if refusal is not None:
            return problem(503, refusal.reason, {"Retry-After": str(refusal.retry_after)})
        result = await fut
        if "error" in result:
            return problem(500, result["error"])
        metrics.requests.labels(status="200").inc()
        metrics.latency.observe(time.monotonic() - arrived)
        return result

    # this module's annotations are strings (postponed evaluation) and the model class is local:
    # give FastAPI the class itself, so it reads the request body into it
    generate.__annotations__["req"] = GenerateRequest
    app.post("/generate")(generate)

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.queue_depth.set(service.scheduler.depth())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve_api(run_dir, host: str = "127.0.0.1", port: int = 8000, slo_ms: float | None = None,
              loops: int | None = None, max_batch: int = 32, max_queue: int = 256, device: str = "cpu",
              progress: bool = True) -> None:
    """Load the run, measure its latencies, serve until SIGTERM/Ctrl-C (then answer what is queued)."""
    try:
        import uvicorn
    except ImportError:
        raise ValueError("the HTTP service needs fastapi, uvicorn and prometheus-client: "
                         "pip install -e '.[api]'") from None
    service = Service(run_dir, slo_ms, loops, max_batch, max_queue, device, progress)
    app = build_app(service)
    how = (f"fixed L={service.fixed}" if service.fixed is not None
           else f"objective {slo_ms:g} ms, L = {service.min_loops} … {service.max_loops}")
    log.info("serving %s on http://%s:%d (%s, batches up to %d, queue %d)", run_dir, host, port, how, max_batch,
             max_queue)
    import signal

    # uvicorn stops taking requests on SIGTERM/SIGINT, waits for the ones in flight (the lifespan's end
    # then drains the queue) and re-raises the signal to the handler that was there before it: a quiet
    # one, so a drained service exits 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    log.info("stopped: every queued request answered")
