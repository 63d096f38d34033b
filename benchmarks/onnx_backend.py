"""onnxruntime against PyTorch eager and compiled, on this machine: the network's forward at L = Lmax (and
L = 1) at batch 1, 8 and 32, and whole sampling (the decoding loop around it) per sample, for exported
folders written by `elt export --format onnx`. Rounds run every backend once in a shuffled order, so a busy
machine's drift hits them alike; medians are reported.

    python benchmarks/onnx_backend.py EXPORT_DIR [EXPORT_DIR ...] [--repeats 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

import torch

import elt
from elt.apps.export import AtLoops, onnx_inputs


def medians(fns: dict, repeats: int, warmup: int = 2) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    order = list(fns)
    for _ in range(repeats):
        random.shuffle(order)
        for k in order:
            tic = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - tic)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(folder: str, repeats: int) -> dict:
    eager = elt.load(folder)
    onnx = elt.load(folder, backend="onnxruntime")
    run, masked = eager.run, eager.framework == "masked"
    loops = sorted(onnx.run.model.sessions)
    out = {"run": folder, "config": run.cfg.name, "framework": eager.framework, "loops": loops, "forward_ms": {},
           "sampling_ms_per_sample": {}}
    for L in (loops[0], loops[-1]):
        at = AtLoops(run.model, L, masked).eval()
        compiled = torch.compile(at, dynamic=False)
        for b in (1, 8, 32):
            names, inputs = onnx_inputs(run, batch=b, seed=0)
            if masked:  # the first decoding step: every position decoded
                inputs = (*inputs[:2], torch.arange(run.model.num_tokens).expand(b, -1).contiguous())
            feed = {n: x.numpy() for n, x in zip(names, inputs)}
            session = onnx.run.model.sessions[L]
            with torch.no_grad():
                r = medians({"eager": lambda: at(*inputs), "compiled": lambda: compiled(*inputs),
                             "onnxruntime": lambda: session.run(None, feed)}, repeats)
            out["forward_ms"][f"L{L}_b{b}"] = {k: 1000 * v for k, v in r.items()}
            print(f"{run.cfg.name} forward L={L} batch {b}: " + ", ".join(f"{k} {1000 * v:.3f} ms" for k, v in r.items()),
                  flush=True)
    L = loops[-1]
    for b in (8, 32):
        r = medians({"eager": lambda: eager.generate(n=b, loops=L, seed=0),
                     "onnxruntime": lambda: onnx.generate(n=b, loops=L, seed=0)}, max(3, repeats // 5), warmup=1)
        out["sampling_ms_per_sample"][f"L{L}_b{b}"] = {k: 1000 * v / b for k, v in r.items()}
        print(f"{run.cfg.name} sampling L={L} batch {b}: " + ", ".join(f"{k} {1000 * v / b:.2f} ms/sample"
                                                                    for k, v in r.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
                          f"{torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}",
               "runs": [bench(f, args.repeats) for f in args.folders]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
