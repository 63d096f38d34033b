"""Open-loop load on `elt api`: the elastic service (a latency SLO) against fixed L = Lmax and
fixed L = Lmin services of the same run, at multiples of the fixed-Lmax service's capacity.

    .venv/bin/python benchmarks/load.py --run runs/fmnist-maskgit --out benchmarks/load-results

For each service and offered load it starts `elt api` on 127.0.0.1 (only), sends requests of one sample
each at Poisson arrival times (an asyncio httpx client: requests go out on schedule whether or not
earlier ones were answered), bounded by --duration seconds and --max-requests, and records every
answer. Capacity = max batch / the fixed-Lmax service's measured batch latency (its /health). Quality
at the loops served comes from the run's any-time table (`elt evaluate` / `elt demo` wrote it).

Writes OUT/load.json, OUT/load.md (the table) and OUT/load.png (p95 latency against offered load).
Every request is counted: sent = answered (200) + refused (503) + failed (anything else, should be 0).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: str, flags: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "elt", "--quiet", "api", "--run", run, "--port", str(port), "--threads", str(threads),
           *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # the first start measures the latency table
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"elt api exited: {proc.stderr.read().strip()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("elt api did not answer /health within 10 minutes")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: the service answers what is queued, then exits
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()


async def offer(url: str, rate: float, duration: float, max_requests: int, classes: int, seed: int) -> list[dict]:
    """Poisson arrivals at `rate` per second for `duration` s (at most `max_requests`); one record per request."""
    rng = random.Random(seed)
    times, t = [], 0.0
    while len(times) < max_requests:
        t += rng.expovariate(rate)
        if t > duration:
            break
        times.append(t)
    records = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def one(i: int, at: float):
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            sent = time.perf_counter()
            rec = {"sent_at": sent - start}
            try:
                r = await client.post(f"{url}/generate", json={"classes": [i % classes], "seed": i})
                rec["status"] = r.status_code
                if r.status_code == 200:
                    rec["loops"] = r.json()["loops"]
            except httpx.HTTPError as e:
                rec["status"], rec["error"] = None, f"{type(e).__name__}: {e}"
            rec["latency_s"] = time.perf_counter() - sent
            records.append(rec)

        start = time.perf_counter()
        await asyncio.gather(*(one(i, at) for i, at in enumerate(times)))
    return records


def summarise(records: list[dict], seconds: float, quality: dict) -> dict:
    ok = [r for r in records if r["status"] == 200]
    lat = np.array([r["latency_s"] for r in ok]) * 1000 if ok else np.array([np.nan])
    loops = [r["loops"] for r in ok]
    out = {"sent": len(records), "answered": len(ok), "refused": sum(r["status"] == 503 for r in records),
           "failed": sum(r["status"] not in (200, 503) for r in records),
           "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
           "p99_ms": float(np.percentile(lat, 99)), "throughput_per_s": len(ok) / seconds,
           "mean_loops": float(np.mean(loops)) if loops else None}
    for name, by_loops in quality.items():  # the any-time table's value at each request's L, averaged
        vals = [by_loops[str(L)] for L in loops if str(L) in by_loops]
        out[name] = float(np.mean(vals)) if vals else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a masked run folder with its any-time report (anytime.json)")
    ap.add_argument("--out", required=True, help="folder for load.json, load.md and load.png (created; must be new)")
    ap.add_argument("--loads", default="0.5,1,2,4", help="offered loads as multiples of the fixed-Lmax capacity")
    ap.add_argument("--slo-ms", type=float, help="the elastic service's SLO (default 2x the fixed-Lmax "
                                                  "service's latency of a full batch)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per point (default 20)")
    ap.add_argument("--max-requests", type=int, default=2000, help="requests per point at most (default 2000)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1,
                    help="network threads of the service (default 1: the load client gets the other core)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists; choose another --out (results are never replaced)")
    report = json.loads((Path(args.run) / "anytime.json").read_text())
    quality = {}
    for L, row in report["loops"].items():
        for k, v in row.items():
            if k.startswith(("fd_", "acc_")) and isinstance(v, (int, float)):
                quality.setdefault(k, {})[L] = v
    loads = [float(x) for x in args.loads.split(",")]
    common = ["--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]

    proc, url = start(args.run, common, args.threads)  # measures (and caches in the run) the latency table
    health = httpx.get(f"{url}/health").json()
    stop(proc)
    lmin, lmax = health["loops"]["min"], health["loops"]["max"]
    batch_ms = health["batch_ms_at_max_batch"][f"L{lmax}"]
    capacity = args.max_batch / (batch_ms / 1000)
    slo = args.slo_ms or 2 * batch_ms
    classes = len(health["classes"])
    print(f"fixed L={lmax}: {batch_ms:.0f} ms per batch of {args.max_batch} → capacity {capacity:.1f} requests/s; "
          f"SLO {slo:.0f} ms", flush=True)
    services = {"elastic": ["--slo-ms", f"{slo:g}"], f"fixed L={lmax}": ["--loops", str(lmax)],
                f"fixed L={lmin}": ["--loops", str(lmin)]}
    rows = []
    for name, flags in services.items():
        for load in loads:
            proc, url = start(args.run, [*common, *flags], args.threads)
            tic = time.perf_counter()
            records = asyncio.run(offer(url, load * capacity, args.duration, args.max_requests, classes, seed=0))
            seconds = time.perf_counter() - tic
            stop(proc)
            row = {"service": name, "load": load, "offered_per_s": load * capacity, **summarise(records, seconds,
                                                                                              quality)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out.mkdir(parents=True)
    import platform

    import torch

    meta = {"run": args.run, "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                        f"{os.cpu_count()} cores, torch {torch.__version__}",
            "threads": args.threads, "max_batch": args.max_batch, "max_queue": args.max_queue, "slo_ms": slo,
            "capacity_per_s": capacity, "duration_s": args.duration, "lmin": lmin, "lmax": lmax,
            "checkpoint_step": health["checkpoint_step"], "sampling": health["sampling"]}
    (out / "load.json").write_text(json.dumps({"settings": meta, "rows": rows}, indent=1))
    qual = [k for k in quality if k.startswith("acc_")][:1] + [k for k in quality if k.startswith("fd_")][:1]
    lines = ["| service | load | offered/s | sent | answered | refused | failed | p50 ms | p95 ms | p99 ms | "
             "answered/s | mean L | " + " | ".join(qual) + " |", "|" + "---|" * (12 + len(qual))]
    for r in rows:
        cells = [r["service"], f"{r['load']:g}×", f"{r['offered_per_s']:.1f}", r["sent"], r["answered"], r["refused"],
                 r["failed"], f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['p99_ms']:.0f}",
                 f"{r['throughput_per_s']:.1f}", "–" if r["mean_loops"] is None else f"{r['mean_loops']:.2f}",
                 *("–" if r[q] is None else f"{r[q]:.3f}" if q.startswith("acc_") else f"{r[q]:.1f}" for q in qual)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (out / "load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in services:
        pts = [r for r in rows if r["service"] == name]
        ax.plot([r["load"] for r in pts], [r["p95_ms"] for r in pts], marker="o", label=f"{name} (p95)")
    ax.axhline(slo, color="k", ls="--", lw=1, label=f"SLO {slo:.0f} ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"offered load (× fixed-L{lmax} capacity, {capacity:.1f} req/s)")
    ax.set_ylabel("latency of answered requests, p95 (ms)")
    ax.set_title(f"elt api under open-loop load ({args.threads} thread, batch ≤ {args.max_batch})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "load.png", dpi=120)
    print(f"wrote {out / 'load.json'}, {out / 'load.md'}, {out / 'load.png'}")


if __name__ == "__main__":
    main()
