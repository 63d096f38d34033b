"""The any-time report — quality, seconds and GFLOPs per loop count — as text tables and a plot."""
from __future__ import annotations


def quality_keys(report: dict) -> list[str]:
    """The quality columns: the metric extractor's accuracy and Fréchet distance first, then any others the
    report holds (video: the image classifier's, on every frame)."""
    p = report["metric_extractor"]
    first = next(iter(report["loops"].values()), {})
    extra = sorted(k for k in first if k.startswith(("acc_", "fd_", "border_")) and k not in (f"acc_{p}", f"fd_{p}"))
    return [k for k in (f"acc_{p}", f"fd_{p}") if k in first or not first] + extra


def _cell(key: str, value) -> str:
    return f"{value:.3f}" if key.startswith(("acc_", "border_")) else f"{value:.2f}"


def format_table(report: dict) -> str:
    keys = quality_keys(report)
    head = f"{'L':>3} " + " ".join(f"{k:>{max(10, len(k))}}" for k in keys) + f" {'s/sample':>10} {'GFLOPs':>8}"
    lines = [f"{report['config']} ({report['objective']}), {report.get('tag', '')}", head]
    for L, r in report["loops"].items():
        mark = " <- Lmax" if int(L) == report["lmax"] else ""
        cells = " ".join(f"{_cell(k, r[k]):>{max(10, len(k))}}" for k in keys)
        lines.append(f"{L:>3} {cells} {r['seconds_per_sample']:>10.4f} {r['gflops_per_sample']:>8.3f}{mark}")
    lines.append("reference: " + ", ".join(f"{k} {v:.4g}" for k, v in report.get("reference", {}).items()))
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    keys = quality_keys(report)
    rows = ["| L | " + " | ".join(keys) + " | s/sample | GFLOPs/sample |", "|---" * (len(keys) + 3) + "|"]
    for L, r in report["loops"].items():
        rows.append(f"| {L} | " + " | ".join(_cell(k, r[k]) for k in keys)
                    + f" | {r['seconds_per_sample']:.4f} | {r['gflops_per_sample']:.3f} |")
    return "\n".join(rows)


def plot_report(report: dict) -> bytes:
    """The report's plot as PNG bytes: quality against GFLOPs per sample, constant L as a line of
    circles; with a schedule search, per-step schedules (triangles), adaptive halting (squares) and the
    frontier (dashed)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = report["metric_extractor"]
    Ls = [int(k) for k in report["loops"]]
    gf = [report["loops"][str(L)]["gflops_per_sample"] for L in Ls]
    search = report.get("schedules", {})
    points = search.get("points", [])
    fig, axes = plt.subplots(1, 2, figsize=(11 if points else 10, 4))
    for ax, key in zip(axes, (f"fd_{p}", f"acc_{p}")):
        vals = [report["loops"][str(L)][key] for L in Ls]
        ax.plot(gf, vals, "o-", label="constant L")
        for L, x, y in zip(Ls, gf, vals):
            ax.annotate(f"L={L}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for kind, marker in (("schedule", "^"), ("adaptive", "s")):
            mine = [q for q in points if q["kind"] == kind]
            if mine:
                ax.scatter([q["gflops_per_sample"] for q in mine], [q[key] for q in mine], marker=marker,
                           label="per-step schedules" if kind == "schedule" else "adaptive halting", zorder=3)
        table = [{"name": f"L{L}", **report["loops"][str(L)]} for L in Ls]
        front = [q for q in points + table if q["name"] in search.get("frontier", [])]
        front = list({q["name"]: q for q in front}.values())
        if front and key.startswith("fd"):
            front.sort(key=lambda q: q["gflops_per_sample"])
            ax.plot([q["gflops_per_sample"] for q in front], [q[key] for q in front], "k--", lw=0.8,
                    label="frontier (search)")
        allv = vals + [q[key] for q in points]
        if key.startswith("acc"):
            ax.set_ylim(0, 1.02)
        else:
            ax.set_ylim(0, max(allv) * 1.15)  # from zero: flat curves look flat
        ax.set_xlabel("GFLOPs per sample")
        ax.set_ylabel(key + (" (lower is better)" if key.startswith("fd") else ""))
        ax.grid(alpha=0.3)
        if points:
            ax.legend(fontsize=7)
    fig.suptitle(f"{report['config']} ({report['objective']}) — {report.get('tag', '')}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def format_schedules(report: dict) -> str:
    """The schedule search as text: every point, then constant vs best schedule per budget."""
    p = report["metric_extractor"]
    search = report["schedules"]
    lines = [f"{'policy':<22} {'mean L':>6} {'acc_' + p:>16} {'fd_' + p:>14} {'GFLOPs':>8} {'s/sample':>9}  per-step"]
    for q in search["points"]:
        mark = " *" if q["name"] in search["frontier"] else ""
        per_step = "-".join(map(str, q["per_step"])) if "per_step" in q else ""
        lines.append(f"{q['name']:<22} {q['mean_loops']:>6.2f} {q['acc_' + p]:>16.3f} {q['fd_' + p]:>14.2f} "
                     f"{q['gflops_per_sample']:>8.3f} {q['seconds_per_sample']:>9.4f}  {per_step}{mark}")
    lines.append("* on the quality/GFLOPs frontier (with the constant-L table: " + ", ".join(search["frontier"]) + ")")
    for c in search["comparison"]:
        lines.append(f"budget {c['budget_loops']:g} loops/step ({c['gflops_per_sample']:.3f} GFLOPs): "
                     f"constant {c['constant']} fd {c.get('constant_fd_' + p) or float('nan'):.2f} vs best schedule "
                     f"{c['best_schedule']} fd {c['schedule_fd_' + p]:.2f}")
    return "\n".join(lines)


def plot_frontier(report: dict) -> bytes:
    """`elt schedules`' frontier as PNG bytes: quality against GFLOPs per sample for every point (colour: the
    sampling steps; marker: the solver; hollow: guidance at fewer loops), the Pareto frontier dashed, the
    run's default settings starred."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd = f"fd_{report['metric_extractor']}"
    points = report["points"]
    steps = sorted({p["sample"]["steps"] for p in points})
    solvers = sorted({p["sample"].get("sampler") or "maskgit" for p in points})
    markers = dict(zip(solvers, "osD^v"))
    colours = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for p in points:
        k = p["sample"]["steps"]
        colour = colours(steps.index(k) / max(1, len(steps) - 1))
        hollow = p["sample"].get("guidance_loops") is not None
        ax.scatter(p["gflops_per_sample"], p[fd], marker=markers[p["sample"].get("sampler") or "maskgit"], s=28,
                   facecolors="none" if hollow else colour, edgecolors=colour, zorder=3)
    front = sorted((p for p in points if p["name"] in report["frontier"]), key=lambda p: p["gflops_per_sample"])
    ax.plot([p["gflops_per_sample"] for p in front], [p[fd] for p in front], "k--", lw=0.8, label="frontier")
    default = next((p for p in points if p["name"] == report.get("default")), None)
    if default is not None:
        ax.scatter(default["gflops_per_sample"], default[fd], marker="*", s=160, c="crimson", zorder=4,
                   label=f"default ({default['name']})")
    for solver, m in markers.items():
        ax.scatter([], [], marker=m, c="grey", label=solver)
    for k in steps:
        ax.scatter([], [], marker="s", color=colours(steps.index(k) / max(1, len(steps) - 1)), label=f"{k} steps")
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="grey", label="guidance at fewer loops")
    ax.set_xlabel("GFLOPs per sample")
    ax.set_ylabel(fd)
    ax.set_title(f"{report['config']}: loops × steps × guidance loops, checkpoint {report['checkpoint_step']}, "
                 f"n {report['n']}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def format_frontier(report: dict) -> str:
    """The frontier's points as a text table, cheapest first; the frontier marked."""
    fd, acc = f"fd_{report['metric_extractor']}", f"acc_{report['metric_extractor']}"
    lines = [f"{report['config']}: {len(report['points'])} points, n {report['n']}, seed {report['seed']}",
             f"{'point':<26} {'GFLOPs':>8} {acc:>16} {fd:>14} {'s/sample':>9}"]
    for p in sorted(report["points"], key=lambda p: p["gflops_per_sample"]):
        mark = " <- frontier" if p["name"] in report["frontier"] else ""
        mark += " (default)" if p["name"] == report.get("default") else ""
        lines.append(f"{p['name']:<26} {p['gflops_per_sample']:>8.3f} {p.get(acc, float('nan')):>16.3f} "
                     f"{p[fd]:>14.2f} {p['seconds_per_sample']:>9.4f}{mark}")
    return "\n".join(lines)
