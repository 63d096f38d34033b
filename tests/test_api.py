"""`elt api`: the scheduler against a fake clock (batching, loop choice, admission), the HTTP answers
(200, 422 naming the field, 503 with Retry-After, /health, /metrics), a burst where every request is
answered or refused, and SIGTERM answering what was queued."""
import asyncio
import base64
import io
import signal
import subprocess
import sys
import time

import pytest

from conftest import free_port
from elt.apps.scheduler import Job, LatencyModel, Scheduler

fastapi = pytest.importorskip("fastapi", reason="the HTTP service needs the api extra (make setup installs it)")
httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")



class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _latency(loops, batch):  # 100 ms per loop, 10 ms per sample
    return 0.1 * loops + 0.01 * batch


def _job(t, n=1, loops=None, seed=0):
    return Job(list(range(n)), loops, seed, t)


def test_scheduler_batches_the_oldest_jobs_and_picks_the_largest_loop_count_in_time():
    clock = Clock()
    s = Scheduler(_latency, list(range(1, 9)), max_batch=4, max_queue=100, slo=1.0, clock=clock)
    for _ in range(5):
        assert s.submit(_job(0.0)) is None
    jobs, loops = s.next_batch()
    # 4 samples, 0.9 s of the SLO to plan with (headroom 0.9), less the 0.11 s the fifth job needs
    # after them at L = 1: 0.1 L + 0.04 ≤ 0.79 → L = 7
    assert len(jobs) == 4 and loops == 7
    clock.t = 0.5  # the fifth job has 0.4 s left to plan with: 0.1 L + 0.01 ≤ 0.4 → L = 3
    jobs, loops = s.next_batch()
    assert len(jobs) == 1 and loops == 3
    assert s.next_batch() is None
    s.submit(_job(0.5))
    clock.t = 1.48  # late already: the cheapest loop count, never a dropped request
    assert s.next_batch()[1] == 1


def test_under_a_backlog_one_batch_does_not_spend_the_time_of_the_requests_behind_it():
    clock = Clock()
    s = Scheduler(_latency, list(range(1, 9)), max_batch=4, max_queue=100, slo=1.0, clock=clock)
    assert all(s.submit(_job(0.0)) is None for _ in range(12))  # admitted: 3 batches at L = 1 take 0.42 s
    finished, chosen = [], []
    while (nxt := s.next_batch()) is not None:
        jobs, loops = nxt
        clock.t += _latency(loops, len(jobs))  # the batch runs exactly as long as predicted
        finished += [clock.t] * len(jobs)
        chosen.append(loops)
    # the head alone could afford L = 8 (0.84 s), which would leave the other 8 jobs late (1.12 s);
    # it gets L = 5, the largest that leaves them their 0.28 s at L = 1
    assert chosen[0] == 5 and max(finished) <= 0.9 + 1e-9


def test_scheduler_serves_pinned_loops_exactly_and_batches_them_apart():
    s = Scheduler(_latency, list(range(1, 9)), max_batch=8, max_queue=100, slo=5.0, clock=Clock())
    for pin in (3, None, 3, None, 2):
        assert s.submit(_job(0.0, loops=pin)) is None
    batches = [s.next_batch() for _ in range(3)]
    assert [(len(j), L) for j, L in batches] == [(2, 3), (2, 8), (1, 2)]
    assert all(j.loops == 3 for j in batches[0][0])


def test_scheduler_refuses_at_once_when_even_lmin_is_too_late_or_the_queue_is_full():
    clock = Clock()
    s = Scheduler(_latency, [1, 2, 4], max_batch=2, max_queue=6, slo=0.5, clock=clock)
    # each queued pair costs 0.12 s at L = 1: the 4th pair would finish at 0.48 s, the 5th at 0.60 s
    results = [s.submit(_job(0.0, n=2)) for _ in range(3)]
    assert results == [None] * 3 and s.depth() == 6
    full = s.submit(_job(0.0))
    assert full.kind == "queue_full" and full.retry_after >= 1
    s = Scheduler(_latency, [1, 2, 4], max_batch=2, max_queue=100, slo=0.6, clock=clock)  # plans with 0.54 s
    assert [s.submit(_job(0.0, n=2)) is None for _ in range(5)] == [True] * 4 + [False]
    late = s.submit(_job(0.0, n=2))
    assert late.kind == "slo" and "L=1" in late.reason and late.retry_after == 1
    s.busy_until = 10.0  # a long batch in flight: refused, told to come back after it
    assert s.submit(_job(0.0)).retry_after >= 10


def test_fixed_service_always_uses_its_loop_count():
    s = Scheduler(_latency, [5], max_batch=4, max_queue=100, slo=None, clock=Clock())
    for _ in range(3):
        s.submit(_job(0.0))
    assert s.next_batch()[1] == 5


def test_latency_model_interpolates_between_measured_sizes_and_learns_a_slowdown():
    m = LatencyModel({(1, 1): 0.1, (4, 1): 0.4, (1, 2): 0.2, (4, 2): 0.8})
    assert m(1, 2) == pytest.approx(0.2) and m(2, 3) == pytest.approx(0.6) and m(1, 8) == pytest.approx(0.8)
    for _ in range(40):
        m.observe(1, 4, 0.8)  # every batch takes twice the table
    assert m.correction == pytest.approx(2.0, rel=1e-3) and m(1, 4) == pytest.approx(0.8, rel=1e-3)


@pytest.fixture(scope="module")
def api_run(masked_run, tmp_path_factory):
    """A copy of the session's run: the service writes its latency table (latency.json) into the run."""
    import shutil

    return shutil.copytree(masked_run, tmp_path_factory.mktemp("api") / "run")


@pytest.fixture(scope="module")
def client(api_run):
    from fastapi.testclient import TestClient

    from elt.apps.api import Service, build_app

    service = Service(api_run, slo_ms=60_000, max_batch=8, max_queue=64, progress=False)
    with TestClient(build_app(service)) as c:
        yield c, service


def test_generate_answers_with_images_loops_time_and_gflops(client):
    from PIL import Image

    c, service = client
    r = c.post("/generate", json={"classes": [3, 5], "loops": 2, "seed": 1})
    assert r.status_code == 200
    body = r.json()
    assert body["labels"] == [3, 5] and body["loops"] == 2 and body["format"] == "png"
    assert body["gflops_per_sample"] == pytest.approx(service.gflops[2], abs=1e-4)
    assert body["total_ms"] >= body["compute_ms"] > 0
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as im:
        assert im.format == "PNG" and im.size == (8, 8)
    again = c.post("/generate", json={"classes": [3, 5], "loops": 2, "seed": 1}).json()
    assert again["images"] == body["images"]  # served alone, same seed: same images
    r = c.post("/generate", json={"n": 3, "budget_gflops": service.gflops[2] * 1.01}).json()
    assert r["labels"] == [0, 1, 2] and r["loops"] == 2  # the largest L within the GFLOPs budget
    assert c.post("/generate", json={"n": 2}).json()["loops"] == service.max_loops  # time to spare: Lmax


@pytest.mark.parametrize("body, field", [
    ({"n": 2, "loops": 99}, "loops"),
    ({"n": 2, "loops": 0}, "loops"),
    ({"classes": [12]}, "classes.0"),
    ({"classes": [1], "n": 2}, "classes, n"),
    ({}, "classes, n"),
    ({"n": 100}, "n"),
    ({"n": "two"}, "n"),
    ({"n": 2, "colour": "red"}, "colour"),
    ({"n": 2, "budget_gflops": 1e-9}, "budget_gflops"),
    ({"n": 2, "loops": 2, "budget_gflops": 1.0}, "loops, budget_gflops"),
])
def test_a_bad_request_is_a_422_naming_the_field(client, body, field):
    c, _ = client
    r = c.post("/generate", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(field + ":")


def test_health_and_prometheus_metrics(client):
    c, service = client
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["loops"]["max"] == service.max_loops and h["slo_ms"] == 60_000
    assert c.post("/generate", json={"n": 1}).status_code == 200  # one answered, one refused as bad input
    assert c.post("/generate", json={"n": 1, "classes": [0]}).status_code == 422
    text = c.get("/metrics").text
    for name in ("elt_requests_total", "elt_request_seconds_bucket", "elt_loops_used_bucket", "elt_queue_depth",
                 "elt_refusals_total"):
        assert name in text, name
    assert 'elt_requests_total{status="200"}' in text and 'elt_requests_total{status="422"}' in text


def test_an_slo_no_loop_count_meets_is_a_503_with_retry_after(api_run):
    from fastapi.testclient import TestClient

    from elt.apps.api import Service, build_app

    service = Service(api_run, slo_ms=1e-3, max_batch=8, max_queue=64, progress=False)
    with TestClient(build_app(service)) as c:
        r = c.post("/generate", json={"n": 1})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "SLO" in r.json()["detail"]
        assert 'elt_refusals_total{reason="slo"} 1.0' in c.get("/metrics").text


def test_a_failed_batch_is_a_500_and_frees_the_worker(api_run, monkeypatch):
    from fastapi.testclient import TestClient

    import elt.engine.sampling
    from elt.apps.api import Service, build_app

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    service = Service(api_run, slo_ms=60_000, max_batch=8, max_queue=64, progress=False)
    with TestClient(build_app(service)) as c:
        monkeypatch.setattr(elt.engine.sampling, "generate", broken)
        monkeypatch.setattr(service.scheduler, "latency", lambda loops, batch: 30.0)  # a batch "takes" 30 s
        r = c.post("/generate", json={"n": 1})
        assert r.status_code == 500 and "out of memory (simulated)" in r.json()["detail"]
        assert service.scheduler.busy_until <= time.monotonic()  # admission does not wait on the failed batch
        monkeypatch.undo()
        assert c.post("/generate", json={"n": 1}).status_code == 200  # the service goes on


def _start(run, *flags):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "elt", "--quiet", "api", "--run", str(run), "--port", str(port),
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"elt api exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("elt api did not start within 120 s")


async def _burst(url, count, body, then=None):
    async with httpx.AsyncClient(timeout=120) as c:
        tasks = [asyncio.create_task(c.post(f"{url}/generate", json=body)) for _ in range(count)]
        seen = None
        if then is not None:
            await asyncio.sleep(0.2)
            seen = await then(c)
        return [r.status_code for r in await asyncio.gather(*tasks)], seen


def test_a_burst_is_answered_or_refused_at_once(api_run):
    proc, url = _start(api_run, "--slo-ms", "400", "--max-batch", "4", "--max-queue", "16")
    try:
        codes, _ = asyncio.run(_burst(url, 60, {"n": 1}))
        assert len(codes) == 60 and set(codes) <= {200, 503}
        assert codes.count(200) >= 4 and codes.count(503) >= 1  # some served, the rest refused at once
        metrics = httpx.get(f"{url}/metrics").text
        answered = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                       if line.startswith("elt_requests_total{"))
        assert answered == 60  # the service counted every one too
    finally:
        proc.kill()


def test_sigterm_answers_every_queued_request_then_exits(api_run):
    proc, url = _start(api_run, "--loops", "4", "--max-batch", "4", "--max-queue", "400")
    try:
        async def terminate(client):
            depth = (await client.get(f"{url}/health")).json()["queue"]
            proc.send_signal(signal.SIGTERM)
            return depth

        codes, depth = asyncio.run(_burst(url, 80, {"n": 4}, then=terminate))
        assert depth > 0  # SIGTERM came with requests still queued
        assert codes == [200] * 80  # and every one of them was answered
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- a service no request can take down ----

@pytest.mark.parametrize("body, field", [
    ({"n": True}, "n"), ({"classes": [1.5]}, "classes.0"), ({"classes": [True]}, "classes.0"),
    ({"classes": ["1"]}, "classes.0"), ({"n": 2, "seed": -5}, "seed"), ({"n": 2, "seed": 2 ** 64}, "seed"),
    ({"classes": []}, "classes"), ({"classes": None}, "classes"), ({"n": 2, "budget_gflops": "1"}, "budget_gflops"),
])
def test_strict_types_and_the_clis_ranges(client, body, field):
    c, _ = client
    r = c.post("/generate", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(field + ":"), r.json()


def test_a_json_integer_may_be_written_1_0(client):
    """1.0 is the integer 1 in JSON and in the published schema's own terms: served as it."""
    c, _ = client
    assert c.post("/generate", json={"classes": [1.0], "loops": 1.0}).json()["labels"] == [1]


def test_sizes_are_bounded_before_anything_is_allocated(client):
    c, service = client
    for body, status, said in (({"n": 10 ** 12}, 422, "n: Input should be less than or equal to"),
                               ({"classes": [0] * 200_000}, 413, "body: larger than")):  # 600 kB
        tic = time.perf_counter()
        r = c.post("/generate", json=body)
        assert r.status_code == status and r.json()["detail"].startswith(said), r.json()
        assert time.perf_counter() - tic < 1.0
    r = c.post("/generate", json={"classes": [0] * (service.scheduler.max_batch + 1)})  # small, but too many
    assert r.status_code == 422 and r.json()["detail"].startswith("classes: List should have at most")
    big = b'{"n": 1, "pad": "' + b"x" * (21 * 2 ** 20) + b'"}'  # 21 MB: refused by its Content-Length
    tic = time.perf_counter()
    r = c.post("/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"] and time.perf_counter() - tic < 1.0

    def chunks():  # no Content-Length: refused once the chunks pass the limit
        yield b'{"n": 1, "pad": "'
        for _ in range(100):
            yield b"x" * 2 ** 16
        yield b'"}'
    assert c.post("/generate", content=chunks(), headers={"content-type": "application/json"}).status_code == 413


def test_bad_json_is_one_clear_line(client):
    c, _ = client
    r = c.post("/generate", content=b'{"n": 2, "seed": }', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not valid JSON (")
    r = c.post("/generate", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


def test_the_published_schema_states_the_rules_and_every_response(client):
    c, service = client
    spec = c.get("/openapi.json").json()
    req = spec["components"]["schemas"]["GenerateRequest"]
    assert req["oneOf"] == [{"required": ["classes"]}, {"required": ["n"]}]
    assert req["properties"]["n"]["maximum"] == service.scheduler.max_batch
    assert req["properties"]["classes"]["maxItems"] == service.scheduler.max_batch
    assert req["properties"]["seed"]["maximum"] == 2 ** 63 - 1 and req["additionalProperties"] is False
    responses = spec["paths"]["/generate"]["post"]["responses"]
    assert {"200", "413", "422", "500", "503"} <= set(responses) and "Retry-After" in responses["503"]["headers"]
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize("api_key", [None, "s3cret"])
def test_schemathesis_with_all_its_checks_finds_nothing(api_run, api_key):
    """The OpenAPI fuzzer in-process against the ASGI app: schema-valid and schema-invalid requests, every
    check schemathesis has (server errors, status codes, content types, response schemas and headers,
    rejected valid data, accepted invalid data, auth, methods)."""
    schemathesis = pytest.importorskip("schemathesis", reason="the fuzzer is a dev dependency (make setup)")
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import CHECKS, load_all_checks

    from elt.apps.api import Service, build_app

    load_all_checks()
    checks = CHECKS.get_all()
    service = Service(api_run, slo_ms=60_000, max_batch=4, max_queue=16, progress=False)
    try:
        app = build_app(service, api_key)
        with TestClient(app):  # the app's lifespan: its worker drains on exit
            schema = schemathesis.openapi.from_asgi("/openapi.json", app)
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
            calls = 0
            for result in schema.get_all_operations():
                op = result.ok()
                strategy = op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE)

                @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                          derandomize=True)
                @given(case=strategy)
                def fuzz(case):
                    nonlocal calls
                    calls += 1
                    case.call_and_validate(checks=checks, headers=headers)
                fuzz()
            assert calls >= 60  # /generate alone had its examples
            if api_key:
                client = TestClient(app)
                assert client.post("/generate", json={"n": 1}).status_code == 401
                assert client.get("/metrics").status_code == 401 and client.get("/health").status_code == 200
                wrong = client.post("/generate", json={"n": 1}, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    finally:
        service.stop()


def test_the_latency_table_is_monotone_before_it_is_used():
    from elt.apps.scheduler import monotone_envelope, nonmonotone

    busy = {(1, 1): 1.0, (1, 2): 0.8, (2, 1): 0.9, (2, 2): 2.0, (4, 1): 1.5, (4, 2): 1.4}  # measured while busy
    assert nonmonotone(busy) == [(1, 2), (2, 1), (4, 2)]
    smooth = monotone_envelope(busy)
    assert nonmonotone(smooth) == [] and all(smooth[k] >= busy[k] for k in busy)
    assert smooth == {(1, 1): 1.0, (1, 2): 1.0, (2, 1): 1.0, (2, 2): 2.0, (4, 1): 1.5, (4, 2): 2.0}


def test_an_open_service_on_a_public_address_says_what_anyone_can_do(api_run, caplog, monkeypatch):
    import elt.apps.api as api

    started = []
    monkeypatch.setattr(api, "Service", lambda *a, **k: started.append(1) or (_ for _ in ()).throw(SystemExit))
    for host, key, warned in (("0.0.0.0", None, True), ("0.0.0.0", "k", False), ("127.0.0.1", None, False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="elt"), pytest.raises(SystemExit):
            api.serve_api(api_run, host=host, api_key=key)
        assert ("anyone who reaches port" in caplog.text) == warned
