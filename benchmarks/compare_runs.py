"""Side-by-side table of finished runs (each evaluated: RUN/anytime.json), for the small-scale
reproductions in the README: parameters, training steps/s, and per loop count the quality and the
GFLOPs per sample.

    .venv/bin/python benchmarks/compare_runs.py runs/t1-elt runs/t1-flat runs/t1-1n1l --loops 1,2,4,8

Prints a Markdown table: one row per run, one "acc / fd" column per loop count (empty where the run
has no such L), and the sampling settings every number was measured with.
"""
import argparse
import json
import statistics
from pathlib import Path

import yaml


def describe(run: Path, loops: list[int]) -> dict:
    report = json.loads((run / "anytime.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rates = [json.loads(line).get("steps_per_s") for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates[1:] if r]  # the first window includes compilation
    m, prefix = cfg["model"], report["metric_extractor"]
    from safetensors.torch import load_file

    weights = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))  # the network's (the tokenizer is apart)
    params = sum(t.numel() for t in weights.values())
    cells = {}
    for L in loops:
        r = report["loops"].get(str(L))
        cells[L] = (None if r is None else
                    (r[f"acc_{prefix}"], r[f"fd_{prefix}"], r["gflops_per_sample"]))
    return {"run": run.name, "objective": report["objective"], "nl": f"{m['unique_layers']}N×{m['max_loops']}L",
            "params": params, "steps_per_s": statistics.median(rates) if rates else None, "cells": cells,
            "steps": cfg["train"]["steps"], "sampling": report["sampling"], "prefix": prefix}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--loops", default="1,2,4,8", help="loop counts to show (default 1,2,4,8)")
    args = ap.parse_args()
    loops = [int(x) for x in args.loops.split(",")]
    rows = [describe(r, loops) for r in args.runs]
    p = rows[0]["prefix"]
    head = ["run", "objective", "N×L", "params", "train steps", "steps/s"] + [f"L={L}: acc / fd (GFLOPs)" for L in loops]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = ["–" if c is None else f"{c[0]:.3f} / {c[1]:.1f} ({c[2]:.2f})" for c in r["cells"].values()]
        params = f"{r['params'] / 1e6:.2f}M"
        rate = "?" if r["steps_per_s"] is None else f"{r['steps_per_s']:.2f}"
        print(f"| {r['run']} | {r['objective']} | {r['nl']} | {params} | {r['steps']} | {rate} | " + " | ".join(cells) + " |")
    s = rows[0]["sampling"]
    print(f"\nacc_{p} / fd_{p} on {s['n']} class-balanced samples per L, seed {s['seed']}; sampling "
          + ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("n", "seed")))


if __name__ == "__main__":
    main()
