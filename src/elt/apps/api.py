"""`elt api --run DIR`: an HTTP JSON service for one elastic checkpoint (FastAPI + uvicorn, optional
extra `elt[api]`) that keeps a latency SLO under load by spending fewer loops.

    POST /generate   {"classes": [3, 5]} or {"n": 4}; optional "loops" or "budget_gflops", "seed"
    GET  /health     the run, the loop range, the SLO, the queue
    GET  /metrics    Prometheus text: requests, latency, loops used, queue depth, refusals

Requests wait in one bounded queue and are served in batches by one worker thread; `scheduler.Scheduler`
picks each batch's loop count so that it answers within the SLO (`--slo-ms`), and refuses at once (503
with Retry-After) what even Lmin cannot answer in time. A request that pins `loops` (or a GFLOPs budget)
gets exactly that. Every request gets exactly one answer; SIGTERM stops taking requests and answers the
ones queued before exiting. The `Service` checks every request (one set of checks and messages); the
HTTP layer only turns its answers into responses.

Without `--slo-ms` the service is a plain batching server at one loop count (`--loops`, default Lmax):
the fixed baseline of `benchmarks/load.py`.
"""
from __future__ import annotations

import base64
import io
import logging
import threading
import time

import numpy as np

from .scheduler import Job, LatencyModel, Refusal, Scheduler, monotone_envelope, nonmonotone

log = logging.getLogger("elt")


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
                 max_queue: int = 256, device: str = "cpu", progress: bool = True, backend: str = "torch"):
        from .model import load

        if slo_ms is not None and slo_ms <= 0:
            raise ValueError(f"--slo-ms must be positive, got {slo_ms:g}")
        if max_batch < 1 or max_queue < max_batch:
            raise ValueError(f"--max-queue ({max_queue}) must be at least --max-batch ({max_batch}) and both ≥ 1")
        self.model = load(run_dir, device, backend, overrides=[f"sample.batch_size={max_batch}"])
        self.run = self.model.run
        m = self.run.cfg.model
        self.min_loops, self.max_loops = m.min_loops, m.max_loops
        if loops is not None and not 1 <= loops <= m.max_loops:
            raise ValueError(f"--loops {loops} is outside 1..{m.max_loops} (this run's Lmax)")
        self.video = self.run.video
        self.slo = None if slo_ms is None else slo_ms / 1000
        self.fixed = loops if loops is not None else (None if slo_ms is not None else m.max_loops)
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
        from ..engine.run import LATENCY
        from ..engine.sampling import latencies

        sizes = sorted({min(2 ** k, max_batch) for k in range(max_batch.bit_length() + 1)})
        log.info("measuring sampling latency at batch sizes %s and L = %s (cached in %s)", sizes, loops,
                 self.run.path / LATENCY)
        table, again = {}, set()
        for attempt in range(3):  # a table measured on a busy machine may not be monotone: measure those again
            for b in sizes:
                redo = tuple(str(L) for (b2, L) in again if b2 == b)
                ms = latencies(self.run, [str(L) for L in loops], progress=progress, batch=b, again=redo)
                table.update({(b, L): ms[str(L)] * b / 1000 for L in loops})
            again = set(nonmonotone(table))
            if not again:
                return table
            log.warning("the latency table is not monotone in L and batch size at %s: measuring those again",
                        sorted(again))
        log.warning("the latency table is still not monotone at %s: using its monotone upper envelope",
                    sorted(again))
        return monotone_envelope(table)

    def _gflops(self) -> dict[int, float]:
        from ..choices import BEYOND_LMAX
        from ..engine.sampling import gflops_per_sample

        return {L: gflops_per_sample(self.run, L) for L in range(1, self.max_loops + BEYOND_LMAX + 1)}

    def loops_for_budget(self, gflops: float) -> int:
        """The largest loop count up to Lmax whose GFLOPs per sample fit `gflops`."""
        fitting = [L for L, g in self.gflops.items() if g <= gflops and L <= self.max_loops]
        if not fitting:
            raise ValueError(f"budget_gflops: {gflops:g} is below the cheapest loop count's "
                             f"{self.gflops[1]:.4g} GFLOPs per sample; raise it")
        return max(fitting)

    def job(self, classes: list[int] | None, n: int | None, loops: int | None, budget_gflops: float | None,
            seed: int, arrived: float, answer) -> Job:
        """The job of one request, after every check (a ValueError naming the field and the fix)."""
        from ..engine.sampling import balanced_labels

        if (classes is None) == (n is None):
            raise ValueError("classes, n: give exactly one (class ids, or a class-balanced count)")
        count = len(classes) if classes is not None else n
        if count > self.scheduler.max_batch:
            raise ValueError(f"{'n' if n is not None else 'classes'}: at most {self.scheduler.max_batch} samples per "
                             "request (the service's --max-batch)")
        try:
            labels = balanced_labels(count, self.run.num_classes, classes).tolist()
        except ValueError as e:
            raise ValueError(f"classes: {e}") from None
        if loops is not None and budget_gflops is not None:
            raise ValueError("loops, budget_gflops: give at most one")
        if loops is not None and not 1 <= loops <= self.max_loops:
            raise ValueError(f"loops: {loops} is outside 1..{self.max_loops} (this model's Lmax)")
        if budget_gflops is not None:
            loops = self.loops_for_budget(budget_gflops)
        if self.fixed is not None and loops is None:
            loops = self.fixed
        return Job(labels, loops, seed, arrived, answer)

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
                "sampling": {"steps": self.run.sample.steps, "guidance": self.run.sample.guidance}}


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

MAX_BODY = 64 * 1024  # bytes: a request body is a few numbers; a larger one is refused (413) before it is read


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 at once — by its Content-Length
    before anything is read, or, when it comes in chunks, as soon as the chunks pass the limit."""

    def __init__(self, app, limit: int = MAX_BODY, on_refusal=None):
        self.app, self.limit, self.on_refusal = app, limit, on_refusal

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message
        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        import json

        if self.on_refusal is not None:
            self.on_refusal()
        body = json.dumps({"detail": f"body: larger than {self.limit} bytes; a request is a few numbers"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(BaseException):
    """Raised from inside the app's body reading; not an Exception, so that no handler on the way (FastAPI turns
    a failed body read into a 400) stops it before `BodyLimit` answers 413."""


def build_app(service: Service, api_key: str | None = None):
    """The FastAPI app over `service`; its shutdown drains the queue. With `api_key`, every endpoint but
    /health answers 401 without `Authorization: Bearer API_KEY`. The published OpenAPI schema states every
    rule of a request it can (types, ranges, sizes, which fields go together) and every response."""
    import asyncio
    import secrets
    from contextlib import asynccontextmanager
    from typing import Annotated

    try:
        from fastapi import Depends, FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
        from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
    except ImportError:
        raise ValueError("the HTTP service needs fastapi, uvicorn and prometheus-client: "
                         "pip install -e '.[api]'") from None
    from ..config import SEED_LIMIT

    num, batch, lmax = len(service.run.class_names), service.scheduler.max_batch, service.max_loops
    cheapest = service.gflops[1]
    def json_integer(value):
        """A JSON integer: an int, or a number with no fractional part (1.0 is the integer 1 in JSON and in
        the schema's own terms) — never a boolean, a string or a fraction."""
        if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        return value

    def json_number(value):
        """A JSON number — never a boolean or a string."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        return value

    def absent(schema: dict) -> None:  # an optional field's default is its absence, not a null value
        schema.pop("default", None)

    def integer(lo: int, hi: int):  # the range first: the schema states it as minimum/maximum
        return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(json_integer)]

    class GenerateRequest(BaseModel):
        """Exactly one of `classes` and `n`; at most one of `loops` and `budget_gflops`."""
        model_config = ConfigDict(extra="forbid", json_schema_extra={
            "oneOf": [{"required": ["classes"]}, {"required": ["n"]}],
            "not": {"required": ["loops", "budget_gflops"]}})
        # absent when not given (never null): a field the schema says is there holds a value
        classes: list[integer(0, num - 1)] = Field(None, min_length=1, max_length=batch, json_schema_extra=absent,
                                                   description=f"class ids (0..{num - 1}), one sample each")
        n: integer(1, batch) = Field(None, json_schema_extra=absent,
                                     description="class-balanced samples (instead of classes)")
        loops: integer(1, lmax) = Field(None, json_schema_extra=absent,
                                        description="pin the loop count (default: the service's choice)")
        budget_gflops: Annotated[float, Field(ge=cheapest, le=1e12, allow_inf_nan=False),
                                 BeforeValidator(json_number)] = Field(
            None, json_schema_extra=absent,
            description=f"the largest loop count within this many GFLOPs per sample (at least {cheapest:.4g}, L=1's)")
        seed: integer(0, SEED_LIMIT - 1) = Field(0, description="same seed and batch, same samples")

    class GenerateResponse(BaseModel):
        images: list[str] = Field(description="base64 PNGs (images) or looping GIFs (video), one per sample")
        format: str
        labels: list[int]
        loops: int
        gflops_per_sample: float
        queue_ms: float
        compute_ms: float
        total_ms: float
        batch_size: int
        batch_seed: int
        checkpoint_step: int

    class Problem(BaseModel):
        detail: str = Field(description="what is wrong and how to fix it, in one line")

    class Health(BaseModel):
        model_config = ConfigDict(extra="allow")
        status: str
        run: str
        checkpoint_step: int
        classes: list[str]

    retry = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
    problems = {413: {"model": Problem, "description": "the body is too large"},
                422: {"model": Problem, "description": "a field is invalid (the detail names it)"},
                500: {"model": Problem, "description": "the batch failed (the detail names the error)"},
                503: {"model": Problem, "description": "refused at once: the queue is full, or even the "
                                                       "smallest loop count cannot answer within the SLO",
                      "headers": retry}}
    if api_key:
        problems[401] = {"model": Problem, "description": "missing or wrong API key (Authorization: Bearer KEY)"}

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = FastAPI(title=f"elt — {service.run.cfg.name}", lifespan=lifespan,
                  description="Class-conditional samples of one elastic looped transformer, at the loop count that "
                              "keeps the latency SLO.")
    metrics = service.metrics
    bearer = HTTPBearer(auto_error=False)

    def problem(status: int, detail: str, headers: dict | None = None):
        metrics.requests.labels(status=str(status)).inc()
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    class Unauthorized(Exception):
        pass

    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)):
        if credentials is None or not secrets.compare_digest(credentials.credentials, api_key):
            raise Unauthorized

    guarded = [Depends(authorized)] if api_key else []  # the schema declares the bearer scheme only when it holds

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized):
        return problem(401, "missing or wrong API key; send the header Authorization: Bearer KEY",
                       {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # a body FastAPI cannot even decode (not UTF-8 text): bad input, like bad JSON
            return problem(422, "body: not valid JSON (not UTF-8 text); send an object such as {\"n\": 4}")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "")
            return problem(422, f"body: not valid JSON ({reason or 'unreadable'} at character "
                                f"{loc[0] if loc else '?'}); send an object such as {{\"n\": 4}}")
        where = ".".join(loc) or "body"
        return problem(422, f"{where}: {first.get('msg', 'invalid')}")

    async def generate(req: GenerateRequest):
        arrived = time.monotonic()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def answer(result):
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))

        try:
            job = service.job(req.classes, req.n, req.loops, req.budget_gflops, req.seed, arrived, answer)
        except ValueError as e:
            return problem(422, str(e))
        refusal = service.submit(job)
        if refusal is not None:
            return problem(503, refusal.reason, {"Retry-After": str(refusal.retry_after)})
        result = await fut
        if "error" in result:
            return problem(500, result["error"])
        metrics.requests.labels(status="200").inc()
        metrics.latency.observe(time.monotonic() - arrived)
        return result

    # this module's annotations are strings (postponed evaluation) and the models are local: give FastAPI
    # the classes themselves, so it reads the request body into them
    generate.__annotations__["req"] = GenerateRequest
    app.post("/generate", response_model=GenerateResponse, responses=problems, dependencies=guarded)(generate)

    @app.get("/health", response_model=Health, description="Open: no API key needed.")
    async def health():
        return service.health()

    @app.get("/metrics", dependencies=guarded, response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"},
                        **({401: problems[401]} if api_key else {})})
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics.queue_depth.set(service.scheduler.depth())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi():
        """FastAPI's schema, with the request's properties as pydantic states them: FastAPI's own models hold
        bounds as floats, which would publish the seed's largest value, 2⁶³−1, as 2⁶³."""
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            spec["components"]["schemas"]["GenerateRequest"]["properties"] = \
                GenerateRequest.model_json_schema()["properties"]
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(BodyLimit, on_refusal=lambda: metrics.requests.labels(status="413").inc())
    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_api(run_dir, host: str = "127.0.0.1", port: int = 8000, slo_ms: float | None = None,
              loops: int | None = None, max_batch: int = 32, max_queue: int = 256, device: str = "cpu",
              progress: bool = True, backend: str = "torch", api_key: str | None = None) -> None:
    """Load the run, measure its latencies, serve until SIGTERM/Ctrl-C (then answer what is queued)."""
    try:
        import uvicorn
    except ImportError:
        raise ValueError("the HTTP service needs fastapi, uvicorn and prometheus-client: "
                         "pip install -e '.[api]'") from None
    if host not in LOOPBACK and not api_key:
        log.warning("serving on %s without an API key: anyone who reaches port %d can have this machine generate "
                    "images (each request costs compute) and read its metrics; set --api-key (or ELT_API_KEY), or "
                    "serve on 127.0.0.1", host, port)
    service = Service(run_dir, slo_ms, loops, max_batch, max_queue, device, progress, backend)
    app = build_app(service, api_key)
    how = (f"fixed L={service.fixed}" if service.fixed is not None
           else f"SLO {slo_ms:g} ms, L = {service.min_loops} … {service.max_loops}")
    log.info("serving %s on http://%s:%d (%s, batches up to %d, queue %d)", run_dir, host, port, how, max_batch,
             max_queue)
    import signal

    # uvicorn stops taking requests on SIGTERM/SIGINT, waits for the ones in flight (the lifespan's end
    # then drains the queue) and re-raises the signal to the handler that was there before it: a quiet
    # one, so a drained service exits 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    log.info("stopped: every queued request answered")
