"""How often one `elt demo` enters each engine file: the reading path a newcomer follows from engine/demo.py.

An entry into engine file X is a function of another engine file that calls into X (counted once per
calling function, however often it runs: a loop is read once). Two other counts stand beside it: the
engine files that call into X, and X's functions that are entered from another file. Property reads and dunder methods are not
entries (`run.num_classes` is read, not followed). The demo runs a tiny configuration under
`sys.setprofile` in a fresh cache; the table lists every engine file, most entered first.

    python benchmarks/demo_path.py [PRESET] [--show]     # default preset: fmnist-maskgit
"""
from __future__ import annotations

import collections
import os
import sys
import tempfile
import threading

TINY = ["train.steps=6", "train.batch_size=8", "train.warmup_steps=2", "tokenizer.steps=3", "tokenizer.batch_size=8",
        "eval.n=20", "eval.loops=[1,2]", "eval.classifier_epochs=0.02", "sample.steps=4", "data.clips=64"]


def trace(preset: str) -> dict[str, set]:
    os.environ["ELT_CACHE_DIR"] = tempfile.mkdtemp(prefix="elt-demo-path-")
    import elt
    from elt.apps.cli import main

    engine = os.path.join(os.path.dirname(elt.__file__), "engine") + os.sep
    entries: dict[str, set] = collections.defaultdict(set)

    def is_property(frame) -> bool:
        self = frame.f_locals.get("self")
        attr = getattr(type(self), frame.f_code.co_name, None) if self is not None else None
        return isinstance(attr, property) or type(attr).__name__ == "cached_property"

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(engine):
            return
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(engine):
            caller = caller.f_back  # through the libraries in between (torch.no_grad, contextlib, ...)
        name = frame.f_code.co_name
        if caller is None or caller.f_code.co_filename == frame.f_code.co_filename or name.startswith(("<", "__")):
            return
        if is_property(frame):
            return
        entries[os.path.basename(frame.f_code.co_filename)].add(
            (os.path.basename(caller.f_code.co_filename), caller.f_code.co_name, name))

    sets = sum((["--set", s] for s in TINY), [])
    out = tempfile.mkdtemp(prefix="elt-demo-path-run-")
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        rc = main(["--quiet", "demo", "--config", preset, "--out", f"{out}/run", *sets])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    if rc != 0:
        raise SystemExit(f"the demo failed (exit {rc})")
    return entries


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", nargs="?", default="fmnist-maskgit")
    ap.add_argument("--show", action="store_true", help="list every call that enters each file")
    args = ap.parse_args()
    entries = trace(args.preset)
    print(f"{'engine file':<16} entries  files  functions  (calling function)")
    for file in sorted(entries, key=lambda f: (-len({c[:2] for c in entries[f]}), f)):
        callers = sorted({c[:2] for c in entries[file]})
        files, functions = {c[0] for c in entries[file]}, {c[2] for c in entries[file]}
        print(f"{file:<16} {len(callers):>7} {len(files):>6} {len(functions):>10}  "
              + ", ".join(f"{a}:{b}" for a, b in callers))
        if args.show:
            for a, b, c in sorted(entries[file]):
                print(f"{'':<26}{a}:{b} -> {c}")


if __name__ == "__main__":
    main()
