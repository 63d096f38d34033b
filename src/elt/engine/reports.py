"""Writing the any-time report: `anytime.json` and `anytime.png` in the run folder, and a copy of both
named after the sampling settings under `eval/`, every file through the atomic writer. Only rank 0
writes under torchrun. A report merges with the one already there when both were measured with the
same sampling settings at the same checkpoint: the constant-L table and the schedule search
(`elt evaluate` and `elt schedules`) keep each other's results."""
from __future__ import annotations

import json
from pathlib import Path

from ..metrics.anytime import plot_report, settings_tag
from ..utils.atomic import write_bytes, write_json
from .distributed import rank_world


def write_report(report: dict, run_dir: Path) -> Path:
    """anytime.json/.png in the run folder and eval/<settings>.json/.png; returns anytime.json's path."""
    run_dir = Path(run_dir)
    if rank_world()[0] != 0:
        return run_dir / "anytime.json"
    tagged = run_dir / "eval" / settings_tag(report)
    tagged.parent.mkdir(parents=True, exist_ok=True)
    report = merged(report, run_dir)
    png = plot_report(report)
    for base in (run_dir / "anytime", tagged):
        write_json(base.with_suffix(".json"), report)
        write_bytes(base.with_suffix(".png"), png)
    return run_dir / "anytime.json"


def merged(report: dict, run_dir: Path) -> dict:
    """`report` with what the run's anytime.json of the same sampling and checkpoint holds and it lacks:
    loop counts it did not measure, and the schedule search."""
    path = Path(run_dir) / "anytime.json"
    if not path.is_file():
        return report
    try:
        old = read_report(path, report.get("framework", "masked"))
    except (ValueError, OSError):
        return report
    if old.get("sampling") != report["sampling"] or old.get("checkpoint_step") != report["checkpoint_step"]:
        return report
    out = dict(report)
    loops = {**old.get("loops", {}), **report.get("loops", {})}
    out["loops"] = {k: loops[k] for k in sorted(loops, key=int)}
    if "schedules" not in report and "schedules" in old:
        out["schedules"] = old["schedules"]
    return out


def read_report(path: Path, framework: str) -> dict:
    """An anytime.json; one written before `sample.guidance` gets its guidance scale from its `cfg`
    (masked runs recorded w of (1+w)·cond − w·uncond: s = 1 + w)."""
    report = json.loads(Path(path).read_text())
    sampling = report.get("sampling", {})
    if "cfg" in sampling and "guidance" not in sampling:
        w = sampling.pop("cfg")
        sampling["guidance"] = 1 + w if framework == "masked" else w
    return report
