"""`elt schedules`: the search for compute-optimal loop schedules (beyond the paper, which runs one L at
every step). For each compute budget (a mean loop count per sampling step: the compute of constant L =
budget) it measures constant L and a family of per-step schedules with the same total loops, and
optionally adaptive halting at several thresholds. The points, the quality/GFLOPs frontier and a
per-budget comparison go into the run's anytime.json (key `schedules`) and its plot; `elt sample
--budget-gflops/--budget-ms` then picks from them (`sampling.pick_for_budget`).
"""
from __future__ import annotations

import logging

from ..core.loops import AdaptiveLoops, LoopSchedule, check_sampling_loops, schedule_family
from ..utils.progress import bar
from .evaluation import eval_n_seed, existing_report, make_judge, measure, new_report, write_report
from .run import FRONTIER, Run, read_report, run_writer
from .sampling import balanced_labels

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
                     seed: int | None = None, max_loops: int | None = None, progress: bool = True) -> dict:
    """Measure constant L and equal-compute schedules at each budget (and adaptive halting at each
    threshold); write them, the frontier and the comparison into DIR/anytime.json."""
    c = run.cfg
    n, seed = eval_n_seed(run, n, seed)
    steps = run.sampler.steps
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
        fresh = new_report(run, judge, n, seed, {})
        report = existing_report(run.path, fresh) or fresh  # its constant-L table stays
        labels = balanced_labels(n, run.num_classes)
        points = []
        for meta, policy in bar(policies, desc="schedules", progress=progress):
            if meta["kind"] == "constant" and meta["name"][1:] in report["loops"]:
                r = dict(report["loops"][meta["name"][1:]])  # measured by `elt evaluate` with these same settings
            else:
                r = measure(run, judge, policy, labels, seed, progress)
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
        return write_report(report, run.path)


# ---------------------------------------------------------------------------------- loops × steps × guidance × solver


def search_frontier(run: Run, loops: list[int], steps: list[int], guidance_loops: list[int] = (),
                    solvers: list[str] = (), n: int | None = None, seed: int | None = None,
                    progress: bool = True) -> dict:
    """Measure every constant L of `loops` at every sampling step count of `steps`, with the unconditional half of
    guidance at the step's loops and at each of `guidance_loops` (below L), and — diffusion — with each solver
    of `solvers` (default: the run's); the Pareto frontier of quality against GFLOPs per sample over all of
    them. Writes RUN/frontier.json and RUN/frontier.png; `elt sample --budget-gflops/--budget-ms`, the Python
    API and `elt api` pick from it. Every point records its settings."""
    from ..metrics.anytime import plot_frontier
    from ..utils.atomic import write_bytes, write_json

    c = run.cfg
    n, seed = eval_n_seed(run, n, seed)
    solvers = list(solvers) or ([run.sample.sampler] if c.framework == "diffusion" else [None])
    if c.framework == "masked" and solvers != [None]:
        raise ValueError("--solvers are diffusion solvers; the masked framework decodes with MaskGIT's schedule")
    for L in loops:
        check_sampling_loops(L, run.sampler.steps, c.model.max_loops)
    grid = []
    for solver in solvers:
        for k in steps:
            for g in [None, *sorted(set(guidance_loops))]:
                sample = {"steps": k, **({"sampler": solver} if solver else {}), "guidance_loops": g}
                view = run.with_sample(**sample)
                if g is not None and not view.sampler.guided:
                    continue  # no guidance, no unconditional half
                for L in loops:
                    if g is None or g < L:
                        grid.append((sample, view, L))
    with run_writer(run.path, "elt schedules"):
        judge = make_judge(run, progress=progress)
        labels = balanced_labels(n, run.num_classes)
        same = {"checkpoint_step": run.step, "metric_extractor": judge.prefix, "base": run.settings(), "n": n,
                "seed": seed}
        points = _earlier_points(run.path / FRONTIER, same)
        for sample, view, L in bar(grid, desc="frontier", progress=progress):
            r = measure(view, judge, L, labels, seed)
            name = (f"L{L}_K{sample['steps']}" + (f"_{sample['sampler']}" if "sampler" in sample else "")
                    + (f"_gl{sample['guidance_loops']}" if sample["guidance_loops"] is not None else ""))
            points = [p for p in points if p["name"] != name]
            points.append({"name": name, "kind": "constant", "spec": str(L), "loops": L, "sample": sample, **r})
            log.info("%s %s", name, r)
        fd = f"fd_{judge.prefix}"
        for p in points:
            p["quality"] = p[fd]
        lmax = c.model.max_loops
        default = next((p["name"] for p in points if p["loops"] == lmax and p["sample"]["steps"] == run.sample.steps
                        and p["sample"].get("sampler", run.sample.sampler) == run.sample.sampler
                        and p["sample"]["guidance_loops"] == run.sample.guidance_loops), None)
        report = {"run": str(run.path), "config": c.name, "framework": c.framework, **same,
                  "default": default, "points": points,
                  "frontier": pareto(points, "gflops_per_sample", fd)}
        write_json(run.path / FRONTIER, report)
        write_bytes(run.path / "frontier.png", plot_frontier(report))
    return report


def _earlier_points(path, same: dict) -> list[dict]:
    """The points of an earlier `elt schedules` frontier of the same checkpoint, metric, base settings, count
    and seed (a frontier grows over several calls); none when anything differs or there is none."""
    try:
        earlier = read_report(path) if path.exists() else None
    except ValueError:
        log.warning("%s is not readable JSON: measuring afresh (it will be replaced)", path.name)
        return []
    if not earlier or any(earlier.get(k) != v for k, v in same.items()):
        if earlier:
            log.info("%s holds another checkpoint's or setting's frontier: measuring afresh", path.name)
        return []
    log.info("keeping %d earlier points of %s (same checkpoint and settings)", len(earlier["points"]), path.name)
    return list(earlier["points"])
