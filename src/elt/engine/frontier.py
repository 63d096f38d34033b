"""Spending compute where it helps (beyond the paper, which runs one L at every step).

* `search_schedules`: for each compute budget (a mean loop count per sampling step: the compute of
  constant L = budget), measure constant L and a family of per-step loop schedules with the same
  total loops; optionally adaptive exit at several thresholds. The points, the quality/GFLOPs
  frontier and a per-budget comparison go into the run's anytime.json (key `schedules`) and plot.
* `pick_for_budget`: the best measured policy within a GFLOPs or a latency budget (latency
  measured on this machine once per policy and cached in the run folder);
* `choose_policy`: what `elt sample` loops with — a loop count, a schedule, adaptive exit or a budget
  pick — and how it was chosen, as recorded with the samples.
"""
from __future__ import annotations

import json
import logging
import platform
import time

import torch

from ..core.loops import AdaptiveLoops, LoopSchedule, check_sampling_loops, schedule_family
from ..utils.atomic import write_json
from ..utils.progress import bar
from .evaluation import eval_settings, make_judge, measure, new_report
from .lock import run_writer
from .reports import read_report, write_report
from .run import Run
from .sampling import balanced_labels, generate, sampler_for

log = logging.getLogger("elt")


def pareto(points: list[dict], cost: str, quality: str, lower_is_better: bool = True) -> list[str]:
    """Names of the points no other point beats on both cost and quality, cheapest first."""
    sign = 1 if lower_is_better else -1
    best, names = float("inf"), []
    for p in sorted(points, key=lambda p: (p[cost], sign * p[quality])):
        if sign * p[quality] < best:
            best = sign * p[quality]
            names.append(p["name"])
    return names


def search_schedules(run: Run, budgets: list[float], thresholds: list[float] = (), n: int | None = None,
                     seed: int | None = None, steps: int | None = None, guidance: float | None = None,
                     max_loops: int | None = None, progress: bool = True) -> dict:
    """Measure constant L and equal-compute schedules at each budget (and adaptive exit at each
    threshold); write them, the frontier and the comparison into DIR/anytime.json."""
    c = run.cfg
    n, seed, steps, guidance = eval_settings(run, n, seed, steps, guidance)
    lmin, lmax = c.model.min_loops, c.model.max_loops
    cap = max_loops or lmax + 2
    check_sampling_loops(cap, steps, lmax)  # --max-loops far above Lmax
    bad = [b for b in budgets if not 1 <= b <= cap]
    if bad:
        raise ValueError(f"budgets {bad} are outside 1..{cap} loops per step; give mean loop counts such as 2,3,4")
    policies: list[tuple[dict, object]] = []
    for b in budgets:
        if float(b).is_integer():
            policies.append(({"kind": "constant", "name": f"L{int(b)}", "budget_loops": b}, LoopSchedule.constant(int(b))))
        for shape, sched in schedule_family(b, steps, 1, cap).items():
            policies.append(({"kind": "schedule", "name": f"{shape}@{b:g}", "shape": shape, "budget_loops": b}, sched))
    for thr in thresholds:
        policies.append(({"kind": "adaptive", "name": f"adaptive@{thr:g}", "threshold": thr,
                          "min_loops": lmin, "max_loops": lmax}, AdaptiveLoops(thr, lmin, lmax)))
    with run_writer(run.path, "elt schedules"):
        judge = make_judge(run, progress)
        report = _base_report(run, judge, n, seed, steps, guidance)
        labels = balanced_labels(n, run.num_classes)
        points = []
        for meta, policy in bar(policies, desc="schedules", progress=progress):
            if meta["kind"] == "constant" and meta["name"][1:] in report["loops"]:
                r = dict(report["loops"][meta["name"][1:]])  # measured by `elt evaluate` with these same settings
            else:
                r = measure(run, judge, policy, labels, seed, steps, guidance, progress)
            if isinstance(policy, LoopSchedule):
                r["per_step"] = policy.per_step(steps)
                r["spec"] = policy.spec()
                r["mean_loops"] = sum(r["per_step"]) / steps
            points.append({**meta, **r})
            log.info("%s %s", meta["name"], {k: v for k, v in r.items() if k != "per_step"})
        fd, acc = f"fd_{judge.prefix}", f"acc_{judge.prefix}"
        comparison = []
        for b in budgets:
            same = [p for p in points if p.get("budget_loops") == b]
            scheds = [p for p in same if p["kind"] == "schedule"]
            const = next((p for p in same if p["kind"] == "constant"), None)
            if not scheds:
                continue
            best = min(scheds, key=lambda p: p[fd])
            comparison.append({"budget_loops": b, "constant": const and const["name"], "best_schedule": best["name"],
                               "best_schedule_spec": best["spec"],
                               f"constant_{fd}": const and const[fd], f"schedule_{fd}": best[fd],
                               f"constant_{acc}": const and const[acc], f"schedule_{acc}": best[acc],
                               "gflops_per_sample": best["gflops_per_sample"]})
        names = {p["name"] for p in points}  # the frontier also weighs the constant L of the report's table
        table = [{"name": f"L{L}", **r} for L, r in report["loops"].items() if f"L{L}" not in names]
        section = {"budgets": list(budgets), "thresholds": list(thresholds), "cap_loops": cap, "points": points,
                   "frontier": pareto(points + table, "gflops_per_sample", fd), "comparison": comparison}
        report["schedules"] = section
        write_report(report, run.path)
    return report


def _base_report(run: Run, judge, n, seed, steps, guidance) -> dict:
    """The run's anytime.json when it was measured with these sampling settings at this checkpoint
    (its constant-L table stays), else a fresh report holding only the schedule search."""
    fresh = new_report(run, judge, n, seed, steps, guidance, {})
    path = run.path / "anytime.json"
    if path.is_file():
        try:
            old = read_report(path, run.cfg.framework)
            if old["sampling"] == fresh["sampling"] and old["checkpoint_step"] == fresh["checkpoint_step"]:
                return old
        except (ValueError, KeyError):
            pass
    return fresh


# ---------------------------------------------------------------------------------- budgets


def measured_policies(run: Run, steps: int, guidance: float) -> list[dict]:
    """Every constant L and schedule measured for this run at these sampling settings (anytime.json),
    as {name, spec, gflops_per_sample, fd, acc}; adaptive points are left out (their compute varies)."""
    path = run.path / "anytime.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `elt evaluate --run {run.path}` and "
                                f"`elt schedules --run {run.path}` first, then sample within a budget")
    report = read_report(path, run.cfg.framework)
    measured, now = report["sampling"], sampler_for(run, steps, guidance).settings()
    differ = {k: (measured[k], v) for k, v in now.items() if k in measured and measured[k] != v}
    if differ:
        said = ", ".join(f"{k}={a} (now {b})" for k, (a, b) in differ.items())
        raise ValueError(f"{path} was measured with {said}; sample with those settings or re-run "
                         "evaluate/schedules with these")
    fd = f"fd_{report['metric_extractor']}"
    out = [{"name": f"L{L}", "spec": str(L), "kind": "constant", "gflops_per_sample": r["gflops_per_sample"],
            "quality": r[fd]} for L, r in report.get("loops", {}).items()]
    for p in report.get("schedules", {}).get("points", []):
        if p["kind"] == "schedule" or (p["kind"] == "constant" and not any(o["name"] == p["name"] for o in out)):
            out.append({"name": p["name"], "spec": p.get("spec", p["name"][1:]), "kind": p["kind"],
                        "gflops_per_sample": p["gflops_per_sample"], "quality": p[fd]})
    return out


def machine_key(run: Run, batch: int, steps: int, guidance: float) -> str:
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else f"{threads} threads"
    return (f"{platform.node()}|{platform.processor() or platform.machine()}|torch {torch.__version__}|"
            f"{where}|batch {batch}|steps {steps}|guidance {guidance:g}|ckpt {run.step}")


def latencies(run: Run, policies: list[dict], steps: int, guidance: float, progress: bool = True,
              batch: int | None = None) -> dict:
    """Milliseconds per sample of each policy at the run's sampling batch (or `batch`), measured once on
    this machine and cached in DIR/latency.json (keyed by machine, threads, batch, steps, cfg, checkpoint)."""
    batch = batch or run.cfg.sample.batch_size
    key = machine_key(run, batch, steps, guidance)
    path = run.path / "latency.json"
    cache = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except ValueError:
            log.warning("%s is unreadable; measuring the latencies again", path)
    table = cache.setdefault(key, {})
    missing = [p for p in policies if p["spec"] not in table]
    labels = balanced_labels(batch, run.num_classes)
    if missing:
        generate(run, 1, labels[:2], 0, steps, guidance)  # warm-up
    for p in bar(missing, desc="latency", progress=progress):
        tic = time.perf_counter()
        generate(run, LoopSchedule.parse(p["spec"]), labels, 0, steps, guidance)
        table[p["spec"]] = 1000 * (time.perf_counter() - tic) / batch
    if missing:
        write_json(path, cache)
    return {p["spec"]: table[p["spec"]] for p in policies}


def pick_for_budget(run: Run, steps: int, guidance: float, gflops: float | None = None, ms: float | None = None,
                    progress: bool = True) -> dict:
    """The measured policy with the best Fréchet distance whose GFLOPs (or measured ms per sample)
    fit the budget; raises naming the cheapest one when none fits."""
    if (gflops is None) == (ms is None):
        raise ValueError("give exactly one budget: --budget-gflops or --budget-ms")
    candidates = measured_policies(run, steps, guidance)
    if ms is not None:
        lat = latencies(run, candidates, steps, guidance, progress)
        for p in candidates:
            p["ms_per_sample"] = lat[p["spec"]]
    cost, budget, unit = ("gflops_per_sample", gflops, "GFLOPs") if gflops is not None else ("ms_per_sample", ms, "ms")
    fitting = [p for p in candidates if p[cost] <= budget]
    if not fitting:
        cheapest = min(candidates, key=lambda p: p[cost])
        raise ValueError(f"no measured loop schedule fits {budget:g} {unit} per sample; the cheapest, "
                         f"{cheapest['name']}, needs {cheapest[cost]:.4g}: raise the budget")
    return min(fitting, key=lambda p: p["quality"])


def choose_policy(run: Run, loops: int | None = None, schedule: LoopSchedule | None = None,
                  adaptive: float | None = None, budget_gflops: float | None = None, budget_ms: float | None = None,
                  steps: int | None = None, guidance: float | None = None,
                  progress: bool = True) -> tuple[object, dict]:
    """(the loop policy, how it was chosen) from exactly one of: a loop count, a schedule, an adaptive-exit
    threshold, a GFLOPs or a latency budget (the best measured schedule that fits it)."""
    m = run.cfg.model
    if loops is not None:
        return loops, {"loops": loops}
    if schedule is not None:
        return schedule, {"loops": schedule.spec()}
    if adaptive is not None:
        policy = AdaptiveLoops(adaptive, m.min_loops, m.max_loops)
        return policy, {"loops": repr(policy)}
    _, _, steps, guidance = eval_settings(run, None, None, steps, guidance)
    best = pick_for_budget(run, steps, guidance, budget_gflops, budget_ms, progress=progress)
    budget = {"budget_gflops": budget_gflops} if budget_gflops is not None else {"budget_ms": budget_ms}
    chosen = {k: best[k] for k in ("name", "gflops_per_sample", "ms_per_sample") if k in best}
    log.info("budget %s: using %s (%s)", budget, best["name"], chosen)
    return LoopSchedule.parse(best["spec"]), {"loops": best["spec"], **budget, "chosen": chosen}
