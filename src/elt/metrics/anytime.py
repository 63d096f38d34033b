"""The any-time report: quality, seconds and GFLOPs per loop count, as JSON, a plot and a table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import write_text


def settings_tag(report: dict) -> str:
    s = report["sampling"]
    return f"steps{s['steps']}_cfg{s['cfg']:g}_seed{s['seed']}_n{s['n']}_ckpt{report['checkpoint_step']}"


def format_table(report: dict) -> str:
    p = report["metric_extractor"]
    head = f"{'L':>3} {'acc_' + p:>16} {'fd_' + p:>14} {'s/sample':>10} {'GFLOPs':>8}"
    lines = [f"{report['config']} ({report['objective']}), {settings_tag(report)}", head]
    for L, r in report["loops"].items():
        mark = " <- Lmax" if int(L) == report["lmax"] else ""
        lines.append(f"{L:>3} {r['acc_' + p]:>16.3f} {r['fd_' + p]:>14.2f} {r['seconds_per_sample']:>10.4f} "
                     f"{r['gflops_per_sample']:>8.3f}{mark}")
    lines.append("reference: " + ", ".join(f"{k} {v:.4g}" for k, v in report.get("reference", {}).items()))
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    p = report["metric_extractor"]
    rows = [f"| L | acc_{p} | fd_{p} | s/sample | GFLOPs/sample |", "|---|---|---|---|---|"]
    for L, r in report["loops"].items():
        rows.append(f"| {L} | {r['acc_' + p]:.3f} | {r['fd_' + p]:.2f} | {r['seconds_per_sample']:.4f} | "
                    f"{r['gflops_per_sample']:.3f} |")
    return "\n".join(rows)


def plot_report(report: dict, path: Path) -> None:
    """Quality against GFLOPs per sample: constant L as a line of circles; with a schedule search,
    per-step schedules (triangles), adaptive exit (squares) and the frontier (dashed)."""
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
                           label="per-step schedules" if kind == "schedule" else "adaptive exit", zorder=3)
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
    fig.suptitle(f"{report['config']} ({report['objective']}) — {settings_tag(report)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def write_report(report: dict, run_dir: Path) -> Path:
    """anytime.json/.png in the run folder, and a copy named after the sampling settings in eval/."""
    run_dir = Path(run_dir)
    tagged = run_dir / "eval" / settings_tag(report)
    tagged.parent.mkdir(parents=True, exist_ok=True)
    for base in (run_dir / "anytime", tagged):
        write_text(base.with_suffix(".json"), json.dumps(report, indent=2))
        plot_report(report, base.with_suffix(".png"))
    return run_dir / "anytime.json"


def grid_canvas(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """uint8 images (rows·cols, H, W, C), row-major → one uint8 canvas with `pad` white pixels between tiles."""
    n, h, w, c = images.shape
    if n != rows * cols:
        raise ValueError(f"grid of {rows}x{cols} needs {rows * cols} images, got {n}")
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return canvas


def _pil(canvas: np.ndarray, scale: int):
    from PIL import Image

    im = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


def save_grid(images: np.ndarray, rows: int, cols: int, path: Path, scale: int = 1, pad: int = 2) -> None:
    """uint8 images (rows·cols, H, W, C), row-major, → one PNG with `pad` pixels between tiles."""
    _pil(grid_canvas(images, rows, cols, pad), scale).save(path)


def video_grid(clips: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """uint8 clips (rows·cols, T, H, W, C) → uint8 frames of the grid (T, H', W', C)."""
    return np.stack([grid_canvas(clips[:, t], rows, cols, pad) for t in range(clips.shape[1])])


def save_video_grid(clips: np.ndarray, rows: int, cols: int, path: Path, scale: int = 1, fps: int = 8,
                    pad: int = 2) -> list[Path]:
    """uint8 clips (rows·cols, T, H, W, C), row-major → an animated GIF at `path` (looping), and an
    MP4 beside it when PyAV is installed. Returns the files written."""
    frames = [_pil(f, scale) for f in video_grid(clips, rows, cols, pad)]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    written = [path]
    try:
        import av
    except ImportError:
        return written
    mp4 = path.with_suffix(".mp4")
    with av.open(str(mp4), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = (frames[0].width + 1) // 2 * 2, (frames[0].height + 1) // 2 * 2  # even sides
        stream.pix_fmt = "yuv420p"
        for im in frames:
            rgb = np.zeros((stream.height, stream.width, 3), np.uint8)
            rgb[: im.height, : im.width] = np.asarray(im.convert("RGB"))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    written.append(mp4)
    return written
