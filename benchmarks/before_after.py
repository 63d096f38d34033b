"""Time the demo preset's training step and sampling with whichever `elt` is importable, so two
commits can be compared side by side (see benchmarks/README.md):

    git worktree add /tmp/elt-before 7ff975c
    PYTHONPATH=/tmp/elt-before/src python benchmarks/before_after.py --label before
    PYTHONPATH=src                 python benchmarks/before_after.py --label after [--compile]

Uses only the API both versions share: `forward_exits`, the framework's loss terms, the ILSD
objective and `MaskGITSampler`. Medians over repeats after warm-up.
"""
import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

import elt
from elt.masked import MaskGITSampler
from elt.presets import get_preset

try:  # the layout since the engine was split (core/, engine/build.py, engine/step.py)
    from elt.core.ilsd import ILSD
    from elt.engine.build import build_framework, build_model
    from elt.engine.step import make_optimizer
except ImportError:  # earlier commits
    from elt.engine.assets import build_framework, build_model
    from elt.engine.train import make_optimizer
    from elt.ilsd import ILSD


def median(fn, warmup=3, repeats=15):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--compile", action="store_true", help="compile the block (train.compile)")
    ap.add_argument("--sample-batch", type=int, default=32)
    args = ap.parse_args()
    cfg = get_preset("fmnist-maskgit-2Nx4L")
    torch.manual_seed(0)
    try:
        model = build_model(cfg, SimpleNamespace(codebook_size=512, num_tokens=49), 10)
    except TypeError:  # builds before build_model took a tokenizer
        model = build_model(cfg, 512, 49, 10)
    if args.compile:
        model.stack.compile_layers()
    try:
        framework = build_framework(cfg, 10, SimpleNamespace(codebook_size=512))
    except AttributeError:
        framework = build_framework(cfg, 10, 512)
    objective = ILSD(1, 4, cfg.train.steps, "ilsd")
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    head_kwargs = getattr(framework, "head_kwargs", lambda mask: {})  # absent before the fast path

    def train_step():
        tokens = torch.randint(0, 512, (cfg.train.batch_size, 49), generator=gen)
        labels = torch.randint(0, 10, (cfg.train.batch_size,), generator=gen)
        out = framework.corrupt(tokens, labels, gen)
        (x, y), mask = (out[0], out[2]) if isinstance(out[0], tuple) else (out[:2], out[2])  # before/after the engine took any framework
        lint = (getattr(objective, "draw_lint", None) or objective.draw_student_loops)(gen)
        outs = model.forward_exits(x, y, loops=4, exits=objective.exits(lint), **head_kwargs(mask))
        loss, _ = objective(outs, lint, 100, lambda p: framework.gt_loss(p, tokens, mask),
                            lambda s, t: framework.dist_loss(s, t, mask))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    result = {"label": args.label, "elt": elt.__file__, "compile": args.compile,
              "train_step_ms": 1e3 * median(train_step)}
    model.eval()
    try:  # fixed here: the preset's own settings changed over time (guidance s = 2 is the older cfg w = 1)
        sampler = MaskGITSampler(steps=12, guidance=2.0)
    except TypeError:
        sampler = MaskGITSampler(steps=12, cfg=1.0)
    labels = torch.arange(args.sample_batch) % 10
    result["sampling_s"] = {L: median(lambda: sampler(model, labels, L, gen), 2, 9) for L in (1, 2, 3, 4)}
    result["sampling_over_lmax"] = {L: v / result["sampling_s"][4] for L, v in result["sampling_s"].items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
