"""The `elt` command: train | sample | evaluate | schedules | demo | api | serve | export | push | presets | bench |
extract | fid | fvd.

Each verb is a `cmd_*` function (argparse dispatches with `set_defaults(func=...)`) that checks its input
and calls the engine; nothing here imports torch until a command runs, so every `--help` answers at once.
Bad input gets one line on stderr naming the problem and the fix, exit code 2, no traceback (`--debug`
shows it). `--quiet` and `--debug` go before or after the verb.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..choices import DEVICES, DIFFUSION_SAMPLERS as DIFFUSION_SAMPLER_NAMES, OBJECTIVES, SCHEDULE_SYNTAX, SPLITS

BACKENDS = ("torch", "onnxruntime")  # what runs the network (apps.model.BACKENDS; kept here: --help imports no torch)

log = logging.getLogger("elt")

DESCRIPTION = "Elastic Looped Transformers: train once, sample at any loop count."


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (argparse prints the whole usage block by default)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


# ----------------------------------------------------------------------------------- argument types


def _list_of(kind, what: str):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
    return parse


_int_list = _list_of(int, "integers")
_float_list = _list_of(float, "numbers")


def _checked(parse, check, what: str):
    """An argparse type: `parse` the text (a wrong kind: "expected WHAT"), then the shared value check."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _positive(text: str) -> int:
    from ..config import check_count

    return _checked(int, check_count, "an integer")(text)


def _guidance(text: str) -> float:
    from ..config import check_guidance

    return _checked(float, check_guidance, "a number")(text)


def _seed(text: str) -> int:
    from ..config import check_seed

    return _checked(int, check_seed, "an integer")(text)


def _real(low: float, strict: bool, meaning: str):
    """An argparse type for a finite number above `low` (strictly, or at least)."""
    from ..config import check_finite

    return _checked(float, lambda value: check_finite(value, low, strict, meaning), "a number")


_budget = _real(0, True, "a budget per sample")
_threshold = _real(0, False, "the change between loops at which a sample stops looping")


def _schedule(text: str):
    from ..core.loops import LoopSchedule

    try:
        return LoopSchedule.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ----------------------------------------------------------------------------------- shared options


def _common() -> argparse.ArgumentParser:
    """--quiet and --debug, accepted after the verb too (SUPPRESS: not given there keeps the top level's)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars or info logs")
    return p


def _add_device(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help=f"where {what} runs: auto (a CUDA GPU when one is visible, else the CPU), cpu or cuda; "
                        "under torchrun one GPU per rank (default auto)")


def _add_config(p: argparse.ArgumentParser, default: str | None, training: bool = True) -> None:
    p.add_argument("--config", default=default, required=default is None,
                   help="preset name (see `elt presets`) or a YAML file, e.g. a run's config.yaml"
                        + (f" (default: {default})" if default else ""))
    p.add_argument("--data-dir", help="folder with the data set's files (Fashion-MNIST idx files, or class folders)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set train.lr=3e-4 (repeatable)")
    if training:
        p.add_argument("--steps", type=_positive, help="training steps (overrides train.steps)")
        p.add_argument("--objective", choices=OBJECTIVES,
                       help="ilsd (default): teacher + student + distillation; vanilla: teacher loss only")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")


def _add_run(p: argparse.ArgumentParser, backend: bool = True) -> None:
    p.add_argument("--run", "--run-dir", dest="run", required=True,
                   help="a run folder (`elt train --out`), an exported folder (`elt export --out`) or a Hugging Face "
                        "Hub id ORG/NAME (downloaded once into its cache); under torchrun spell it --run-dir")
    if backend:
        p.add_argument("--backend", choices=BACKENDS, default="torch",
                       help="what runs the network: torch (default), or onnxruntime (the ONNX graphs of an exported "
                            "folder, one per loop count: `elt export --format onnx`)")


def _add_sampling(p: argparse.ArgumentParser, n_help: str, n_default: int | None = None,
                  seed_default: int | None = None) -> None:
    p.add_argument("--n", "--num-samples", dest="n", type=_positive, default=n_default,
                   help=f"{n_help} (under torchrun spell it --num-samples)")
    p.add_argument("--seed", type=_seed, default=seed_default,
                   help="sampling seed; same seed, same samples (default: "
                        + ("the run's eval.seed)" if seed_default is None else f"{seed_default})"))
    p.add_argument("--steps", type=_positive, help="sampling steps: masked decoding steps K or diffusion "
                                                   "denoising steps (default: the run's sample.steps)")
    p.add_argument("--guidance", type=_guidance,
                   help="classifier-free guidance s in uncond + s*(cond - uncond), both frameworks; 1 = off "
                        "(default: the run's sample.guidance)")
    p.add_argument("--guidance-loops", type=_positive, metavar="K",
                   help="run the unconditional half of guidance at K loops while the conditional half runs the "
                        "policy's L (K <= L at every step; GFLOPs count both halves as run)")
    p.add_argument("--sampler", choices=DIFFUSION_SAMPLER_NAMES,
                   help="diffusion solver: ddim, ddpm or dpmpp2m (DPM-Solver++ 2M) (default: the run's sample.sampler)")
    p.add_argument("--set", action="append", default=[], metavar="sample.KEY=VALUE",
                   help="change a sampling setting of the run's config, e.g. --set sample.choice_temperature=2 "
                        "(repeatable; recorded in the report and the output names)")
    _add_device(p, "the network and the tokenizer")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="elt", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name: str, func, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], **kw)
        p.set_defaults(func=func)
        return p

    p = verb("train", cmd_train, help="train a model into a run folder")
    _add_config(p, None)
    p.add_argument("--out", required=True, help="run folder (config.yaml, checkpoints, metrics.jsonl)")
    _add_device(p, "training (and a tokenizer elt trains)")

    p = verb("sample", cmd_sample, help="generate class-conditional samples at a chosen loop count, loop schedule "
                                        "or compute budget")
    _add_run(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--loops", type=_positive, help="loop count L used at every sampling step")
    how.add_argument("--schedule", type=_schedule, help="one loop count per sampling step: " + SCHEDULE_SYNTAX)
    how.add_argument("--adaptive", type=_threshold, metavar="THRESHOLD",
                     help="adaptive halting: per sample and step, stop looping when the output changes by at most "
                          "THRESHOLD between loops (masked: KL in nats; diffusion: relative RMS), within Lmin..Lmax")
    how.add_argument("--budget-gflops", type=_budget, metavar="X",
                     help="the best schedule measured by `elt schedules`/`elt evaluate` that needs at most X GFLOPs "
                          "per sample")
    how.add_argument("--budget-ms", type=_budget, metavar="X",
                     help="the best measured schedule that takes at most X ms per sample on this machine (latency "
                          "measured once per schedule and cached in the run folder)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="output path; writes OUT.npz (images, labels, settings) and OUT.png (grid "
                                     "with the settings in a caption); video: OUT.gif and OUT.mp4")
    where.add_argument("--folder", metavar="ROOT",
                       help="large sets (FID/FVD): write ROOT/<run>_ckpt.._L.._K.._guidance.._seed.._n../ (every sampling "
                            "setting in the name) with "
                            "shards, manifest.json, samples.npz and the ADM evaluator's samples_adm.npz; "
                            "class-balanced, split across torchrun ranks, resumable (rerun the same command)")
    p.add_argument("--shard-size", type=_positive, default=1000, help="samples per shard with --folder (default 1000)")
    p.add_argument("--export-frames", metavar="DIR",
                   help="video: also write every clip as DIR/VVVVVV/FFFFFF.png (StyleGAN-V's evaluator layout)")
    p.add_argument("--classes", type=_int_list,
                   help="comma-separated class ids to cycle through (default: all, balanced)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    _add_overwrite(p, "OUT.npz and its grids, or a non-empty --export-frames folder")
    _add_sampling(p, "number of samples (default 100)", n_default=100, seed_default=0)

    p = verb("evaluate", cmd_evaluate, help="any-time report: quality, time and GFLOPs per loop count",
             description="Samples n class-balanced images (or clips) at each loop count and measures quality, "
                         "seconds and GFLOPs per sample. Writes RUN/anytime.json and RUN/anytime.png, and a copy "
                         "of both named after the sampling settings, RUN/eval/ckpt.._K.._guidance.._seed.._n...json")
    _add_run(p)
    p.add_argument("--loops", type=_int_list, help="loop counts, e.g. 1,2,3 (default 1..Lmax+2)")
    p.add_argument("--no-ema", action="store_true",
                   help="use the raw weights instead of the EMA weights (the report's copy is named ..._raw)")
    _add_sampling(p, "samples per loop count (default: the run's eval.n)")

    p = verb("schedules", cmd_schedules,
             help="compute-optimal loop schedules: constant L vs per-step schedules of equal total loops at each "
                  "budget, and adaptive halting; the frontier goes into RUN/anytime.json and RUN/anytime.png")
    _add_run(p)
    p.add_argument("--budgets", type=_float_list, default=None,
                   help="compute budgets as mean loops per sampling step, e.g. 2,3,4 (the compute of constant "
                        "L = 2, 3, 4; default 2..Lmax)")
    p.add_argument("--thresholds", type=_float_list, default=[],
                   help="adaptive-halting thresholds to measure too, e.g. 0.01,0.03,0.1 (default none)")
    p.add_argument("--max-loops", type=_positive, help="largest loop count a schedule may use (default Lmax+2)")
    p.add_argument("--steps-grid", type=_int_list, metavar="K,K,...",
                   help="the frontier of loops × steps × guidance loops (× solver): measure every constant L of "
                        "--loops-grid at each of these sampling step counts; writes RUN/frontier.json and .png")
    p.add_argument("--loops-grid", type=_int_list, metavar="L,L,...", help="the frontier's loop counts (default Lmin..Lmax)")
    p.add_argument("--guidance-loops-grid", type=_int_list, default=[], metavar="K,K,...",
                   help="the frontier: also run the unconditional half of guidance at each of these loop counts")
    p.add_argument("--solvers", type=_list_of(str, "solver names"), default=[], metavar="NAME,NAME",
                   help="the frontier (diffusion): the solvers to measure, e.g. ddim,dpmpp2m (default: the run's)")
    _add_sampling(p, "samples per point (default: the run's eval.n)")

    p = verb("api", cmd_api, help="HTTP JSON service (FastAPI): batches requests and spends fewer loops under load "
                                  "to keep a latency objective (--slo-ms)")
    _add_run(p)
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--slo-ms", type=float, metavar="MS",
                     help="latency objective: each batch gets the largest L that answers its oldest request within MS; "
                          "a request even Lmin cannot answer in time is refused at once (503, Retry-After)")
    how.add_argument("--loops", type=_positive,
                     help="serve every request at this L (a fixed service; default without --slo-ms: Lmax)")
    p.add_argument("--max-batch", type=_positive, default=32, help="samples per batch at most (default 32)")
    p.add_argument("--max-queue", type=_positive, default=256, help="samples waiting at most; beyond, 503 (default 256)")
    p.add_argument("--threads", type=_positive, help="CPU threads for the network (default: torch's)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="answer every endpoint but /health with 401 unless the request carries Authorization: Bearer "
                        "KEY (default: $ELT_API_KEY; none: open to whoever reaches the port)")
    _add_device(p, "the network and the tokenizer")

    p = verb("serve", cmd_serve, help="local web demo (gradio): pick a class and a loop count, generate")
    _add_run(p)
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--n", type=_positive, default=4, help="images per generation (default 4)")
    p.add_argument("--set", action="append", default=[], metavar="sample.KEY=VALUE",
                   help="change a sampling setting of the run's config (repeatable)")
    _add_device(p, "the network and the tokenizer")

    p = verb("demo", cmd_demo, help="train a preset, evaluate every L, write the any-time grid")
    _add_config(p, "fmnist-maskgit")
    p.add_argument("--out", default=None, help="run folder (default: runs/<preset>-<objective>)")
    _add_device(p, "training, sampling (and a tokenizer elt trains)")

    verb("presets", cmd_presets, help="list presets with parameters and GFLOPs per forward pass")

    p = verb("export", cmd_export, help="write a run as a Hugging Face model folder (config.json, model.safetensors, "
                                        "a model card with its any-time table), and ONNX graphs per loop count")
    _add_run(p, backend=False)
    p.add_argument("--out", required=True, help="the folder to write (a Hub model repository's layout)")
    p.add_argument("--format", choices=("hub", "onnx"), default="hub",
                   help="hub (default): config, weights, tokenizer and model card; onnx: also one ONNX graph per "
                        "--loops (extra elt[onnx])")
    p.add_argument("--loops", type=_int_list, help="loop counts of the ONNX graphs, e.g. 1,4,8 (default: 1..Lmax)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights")
    _add_overwrite(p, "an existing --out folder (replaced whole once the new one is written)")

    p = verb("push", cmd_push, help="upload a run (exported first) or an exported folder to the Hugging Face Hub")
    _add_run(p, backend=False)
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub model repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--no-ema", action="store_true", help="upload the raw weights instead of the EMA weights")

    p = verb("bench", cmd_bench, help="speed and memory: ILSD vs vanilla step, sampling time per L, looped vs "
                                      "flat throughput, training FLOP/s and MFU (see benchmarks/README.md)")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run; numbers are noisier)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--preset", action="append", help="preset to measure (repeatable; default: "
                                                     "fmnist-maskgit-2Nx4L and fmnist-maskgit-w256-2Nx4L)")
    _add_overwrite(p, "an existing --json file")
    _add_device(p, "the measurement")

    p = verb("extract", cmd_extract, help="pre-tokenise / pre-encode a data set once into sharded memory-mapped "
                                          "arrays (resumable; torchrun splits shards); then train with "
                                          "--set data.dataset=extracted --data-dir OUT")
    _add_config(p, None, training=False)
    p.add_argument("--out", required=True, help="folder for manifest.json, shard_NNNNN.npy (+ .labels.npy)")
    p.add_argument("--split", default="train", choices=SPLITS, help="which split (default train)")
    p.add_argument("--shard-size", type=_positive, default=4096, help="examples per shard (default 4096)")
    p.add_argument("--flip", action="store_true", help="also store every example flipped left-right (augmentation)")
    p.add_argument("--tokenizer-examples", type=_positive, default=20_000,
                   help="examples a tokenizer that elt trains is trained on (default 20000)")
    _add_device(p, "the tokenizer")

    p = verb("fid", cmd_fid, help="FID, Inception Score and precision/recall (k=3) of a sample .npz against a "
                                  "reference .npz, with the FID Inception weights from a local file")
    _add_score_args(p, ".npz of uint8 images: `elt sample` output (images) or ADM (arr_0)",
                    "reference .npz of real images (e.g. the ADM evaluator's VIRTUAL_imagenet256_labeled.npz); its "
                    "features are cached")
    p.add_argument("--inception", required=True, help="path of pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--sha256", help="full SHA-256 the weights file must have (default: check the name's prefix)")
    p.add_argument("--batch-size", type=_positive, default=100, help="images per Inception batch (default 100)")
    p.add_argument("--pr-n", type=_positive, default=10_000, help="features per side for precision/recall "
                                                                  "(default 10000, as the ADM evaluator)")

    p = verb("fvd", cmd_fvd, help="FVD of sampled clips against real ones, with StyleGAN-V's TorchScript I3D from "
                                  "a local file")
    _add_score_args(p, ".npz of uint8 clips written by `elt sample` (images N×T×H×W×C)",
                    "real clips: an .npz like --samples, or a UCF-101 folder (train list 1); the reference "
                    "statistics are cached")
    p.add_argument("--i3d", required=True, help="path of i3d_torchscript.pt")
    p.add_argument("--sha256", default="default", help="SHA-256 the I3D file must have (default: the known digest; "
                                                       "'none' skips the check)")
    p.add_argument("--ref-clips", type=_positive, default=2048, help="real clips for the statistics (default 2048)")
    return parser


def _add_score_args(p: argparse.ArgumentParser, samples: str, ref: str) -> None:
    p.add_argument("--samples", required=True, help=samples)
    p.add_argument("--ref", required=True, help=ref)
    _add_device(p, "the feature network")
    p.add_argument("--json", help="also write the results to this JSON file")
    _add_overwrite(p, "an existing --json file")


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (by default an existing output "
                                                            "is never replaced)")


# ----------------------------------------------------------------------------------- helpers


def _config_from_args(args):
    from ..config import apply_overrides
    from ..presets import load_config

    cfg = load_config(args.config)
    overrides = list(args.set)
    if getattr(args, "steps", None):
        overrides.append(f"train.steps={args.steps}")
    if getattr(args, "objective", None):
        overrides.append(f"train.objective={args.objective}")
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if getattr(args, "device", "auto") != "auto":
        overrides.append(f"train.device={args.device}")
    return apply_overrides(cfg, overrides).validate()


def _check_out_file(out: str, suffixes=(), overwrite: bool = False) -> Path:
    """The output path without its suffix (OUT/samples when OUT ends with a slash or is a folder), once its
    folder is known writable, none of BASE+suffixes is a run's own file, and none exists (unless --overwrite)."""
    import os

    from ..engine.run import refuse_own_files
    from ..utils.files import check_writable, refuse_existing, with_ext

    if not str(out).strip():
        raise ValueError("--out is empty; give an output path, e.g. --out samples/first")
    path = Path(out)
    if len(path.name) > 200:
        raise ValueError(f"the output name {path.name[:40]}… is {len(path.name)} characters long; use at most 200")
    if str(out).endswith(("/", os.sep)) or path.is_dir():  # a folder: the files go inside it
        path = path / "samples"
    if path.suffix in (".npz", ".png", ".gif", ".mp4", ".json"):
        path = path.with_suffix("")
    check_writable(path.parent, "output folder")
    outputs = [with_ext(path, s) for s in suffixes]
    refuse_own_files(outputs, "--out")
    refuse_existing(outputs, overwrite)
    return path


def _run_ranks(device: str) -> tuple[str, bool]:
    """Under torchrun `sample`, `evaluate`, `schedules`, `fid` and `fvd` split the work across ranks (one GPU
    each on CUDA): (this rank's device, whether it is rank 0, which writes and prints)."""
    from ..engine.devices import setup

    info = setup(device)  # a missing GPU is one clear error there
    return str(info.device), info.is_main


def _check_json(path: str, overwrite: bool) -> None:
    from ..engine.run import refuse_own_files
    from ..utils.files import check_writable, refuse_existing

    refuse_own_files([path], "--json")
    refuse_existing([path], overwrite)
    check_writable(Path(path).parent, "--json folder")


def _write_json(out: dict, path: str | None) -> None:
    if path:
        from ..utils.atomic import write_json

        write_json(path, out)
        print(f"wrote {path}")


# ----------------------------------------------------------------------------------- commands


def cmd_train(args) -> None:
    from ..engine.train import train

    train(_config_from_args(args), args.out, resume=args.resume, progress=not args.quiet)


def cmd_demo(args) -> None:
    from ..engine.demo import demo

    cfg = _config_from_args(args)
    demo(cfg, args.out or f"runs/{cfg.name}-{cfg.train.objective}", resume=args.resume, progress=not args.quiet)


def cmd_sample(args) -> None:
    from ..engine.sampling import write_samples

    base = _check_out_file(args.out, (".npz", ".png", ".gif", ".mp4"), args.overwrite) if args.out is not None else None
    from ..engine.run import refuse_own_files

    if args.export_frames:
        from ..utils.files import check_writable, refuse_existing
        refuse_own_files([Path(args.export_frames) / "x"], "--export-frames")
        refuse_existing([args.export_frames], args.overwrite)
        check_writable(Path(args.export_frames).parent, "--export-frames folder's parent")
    if args.folder and Path(args.folder).exists() and not Path(args.folder).is_dir():
        raise ValueError(f"--folder {args.folder} is a file; give a folder (it is created when missing)")
    if args.folder:
        refuse_own_files([Path(args.folder) / "x"], "--folder")
    device, main_rank = _run_ranks(args.device)
    model = _load(args, device)
    if args.export_frames and not model.run.video:
        raise ValueError(f"--export-frames is for video runs; {args.run} makes images (drop --export-frames)")
    run, policy, how, _ = model.request(args.classes, args.n, args.loops if args.loops is not None else args.schedule,
                                        args.adaptive, args.budget_gflops, args.budget_ms, seed=args.seed,
                                        progress=not args.quiet)
    written, settings = write_samples(run, policy, how, args.n, args.seed, args.classes, base,
                                      Path(args.folder) if args.folder else None, args.shard_size,
                                      args.export_frames, progress=not args.quiet)
    if main_rank:
        print(f"wrote {', '.join(map(str, written))} ({args.n} samples, {settings})")


def _load(args, device: str):
    """The model of `--run` (the Python API's object), with the sampling settings the command line gives
    (--steps, --guidance, --no-ema, --set sample.*, --backend) resolved once."""
    from .model import load

    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "sampler", None):
        overrides.append(f"sample.sampler={args.sampler}")
    if getattr(args, "guidance_loops", None):
        overrides.append(f"sample.guidance_loops={args.guidance_loops}")
    return load(args.run, device, getattr(args, "backend", "torch"), ema=False if getattr(args, "no_ema", False)
                else None, steps=getattr(args, "steps", None), guidance=getattr(args, "guidance", None),
                overrides=overrides)


def cmd_evaluate(args) -> None:
    from ..engine.evaluation import evaluate
    from ..metrics.anytime import format_table

    if args.loops is not None and (not args.loops or min(args.loops) < 1):
        raise ValueError("--loops needs loop counts >= 1, e.g. --loops 1,2,4")
    device, main_rank = _run_ranks(args.device)
    run = _load(args, device).run
    report = evaluate(run, args.loops, args.n, args.seed, progress=not args.quiet and main_rank)
    if main_rank:
        print(format_table(report))
        print(f"wrote {run.path / 'anytime.json'} and {run.path / 'anytime.png'}")


def cmd_schedules(args) -> None:
    from ..engine.schedules import search_frontier, search_schedules
    from ..metrics.anytime import format_frontier, format_schedules

    bad = [s for s in args.solvers if s not in DIFFUSION_SAMPLER_NAMES]
    if bad:
        raise ValueError(f"--solvers: {bad[0]!r} is not a solver elt has; choose from {', '.join(DIFFUSION_SAMPLER_NAMES)}")
    device, main_rank = _run_ranks(args.device)
    run = _load(args, device).run
    if args.steps_grid or args.loops_grid or args.guidance_loops_grid or args.solvers:
        m = run.cfg.model
        report = search_frontier(run, args.loops_grid or list(range(m.min_loops, m.max_loops + 1)),
                                 args.steps_grid or [run.sample.steps], args.guidance_loops_grid, args.solvers,
                                 args.n, args.seed, progress=not args.quiet and main_rank)
        if main_rank:
            print(format_frontier(report))
            print(f"wrote {run.path / 'frontier.json'} and {run.path / 'frontier.png'}")
        return
    budgets = args.budgets or [float(L) for L in range(2, run.cfg.model.max_loops + 1)]
    report = search_schedules(run, budgets, args.thresholds, args.n, args.seed, args.max_loops,
                              progress=not args.quiet and main_rank)
    if main_rank:
        print(format_schedules(report))
        print(f"wrote {run.path / 'anytime.json'} and {run.path / 'anytime.png'}")


def _check_port(host: str, port: int) -> None:
    """Before loading anything: is the port valid and free?"""
    import socket

    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port "
                             f"(or --host)") from None


def cmd_serve(args) -> None:
    from .serve import serve

    _check_port(args.host, args.port)
    device, _ = _run_ranks(args.device)
    serve(args.run, host=args.host, port=args.port, n=args.n, device=device, sample_overrides=args.set,
          backend=args.backend)


def cmd_api(args) -> None:
    import torch

    from .api import serve_api

    _check_port(args.host, args.port)  # the Service checks its own arguments before loading the run
    if args.threads:
        torch.set_num_threads(args.threads)
    device, _ = _run_ranks(args.device)
    import os

    serve_api(args.run, args.host, args.port, args.slo_ms, args.loops, args.max_batch, args.max_queue, device,
              progress=not args.quiet, backend=args.backend, api_key=args.api_key or os.environ.get("ELT_API_KEY"))


def cmd_export(args) -> None:
    from .export import export

    loops = args.loops
    if args.format == "hub" and loops:
        raise ValueError("--loops names the ONNX graphs' loop counts; add --format onnx (or drop --loops)")
    if args.format == "onnx" and loops is None:
        from ..engine.run import stored
        loops = list(range(1, stored(Path(args.run)).cfg.model.max_loops + 1))
    out = export(args.run, args.out, ema=not args.no_ema, onnx_loops=loops if args.format == "onnx" else None,
                 overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out} (load it with elt.load({str(out)!r}), or --run {out})")


def cmd_push(args) -> None:
    from .export import push

    url = push(args.run, args.repo_id, ema=not args.no_ema, private=args.private, progress=not args.quiet)
    print(f"pushed {args.run} to {args.repo_id}: {url}")


def cmd_presets(args) -> None:
    from ..engine.build import preset_summary
    from ..presets import ALIASES, PAPER_PARAMS, PRESETS

    print(f"{'preset':<26} {'N':>3} {'Lmax':>4} {'width':>5} {'tokens':>6} {'params':>9} {'GFLOPs/fwd@Lmax':>16}  "
          f"paper's params")
    for name in PRESETS:
        if name in ALIASES:
            continue
        s = preset_summary(name)
        print(f"{name:<26} {s['unique_layers']:>3} {s['max_loops']:>4} {s['width']:>5} {s['tokens']:>6} "
              f"{s['params'] / 1e6:>8.1f}M {s['gflops_at_lmax']:>16.2f}  {PAPER_PARAMS.get(name, '')}")
    print("aliases: " + ", ".join(f"{a} -> {t}" for a, t in ALIASES.items()))


def cmd_bench(args) -> None:
    from ..engine.devices import resolve_device
    from ..presets import PRESETS
    from .bench import DEFAULT_PRESETS, format_results, run_bench

    presets = tuple(args.preset or DEFAULT_PRESETS)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset {unknown[0]!r}; `elt presets` lists them")
    if args.json:
        _check_json(args.json, args.overwrite)
    device = resolve_device(args.device).type
    results = run_bench(presets, args.quick, device, log=(lambda *a: None) if args.quiet else print)
    print(format_results(results))
    _write_json(results, args.json)


def cmd_extract(args) -> None:
    from ..engine.devices import resolve_device, setup
    from ..engine.extract import extract

    from ..engine.run import refuse_own_files

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder for the shards (it is created when missing)")
    refuse_own_files([Path(args.out) / "manifest.json"], "--out")
    setup("cpu")  # the process group (torchrun) for shard splitting; the tokenizer runs on --device
    out = extract(_config_from_args(args), args.out, args.split, args.shard_size, args.flip,
                  args.tokenizer_examples, resolve_device(args.device), progress=not args.quiet)
    print(f"extracted to {out}; train with --set data.dataset=extracted --data-dir {out}")


def cmd_fid(args) -> None:
    from ..engine.fid import image_metrics

    if args.json:
        _check_json(args.json, args.overwrite)
    device, main_rank = _run_ranks(args.device)
    out = image_metrics(args.samples, args.ref, args.inception, args.sha256, device, args.batch_size,
                        args.pr_n, progress=not args.quiet)
    if main_rank:
        print(f"FID {out['fid']:.3f}  IS {out['is']:.2f} ± {out['is_std']:.2f}  precision {out['precision']:.3f}  "
              f"recall {out['recall']:.3f}  ({out['n_samples']} samples, Inception via {out['inception_backend']})")
        _write_json(out, args.json)


def cmd_fvd(args) -> None:
    from ..engine.fid import video_metrics

    sha = None if args.sha256.lower() == "none" else args.sha256
    if args.json:
        _check_json(args.json, args.overwrite)
    device, main_rank = _run_ranks(args.device)
    out = video_metrics(args.samples, args.ref, args.i3d, sha, device, ref_clips=args.ref_clips,
                        progress=not args.quiet)
    if main_rank:
        print(f"FVD {out['fvd']:.2f}  ({out['n_samples']} clips against {out['n_reference']} real ones)")
        _write_json(out, args.json)


# ----------------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    finished = False

    def fail(text: str, code: int) -> int:
        """One line on stderr (and, with --debug, the traceback first); the exit code stays the error's."""
        if args.debug:
            import traceback
            traceback.print_exc()
        print(f"elt: {text}", file=sys.stderr)
        return code

    try:
        args.func(args)
        finished = True
    except BrokenPipeError:  # e.g. `elt presets | head`: the reader left; stop quietly
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, FileNotFoundError, PermissionError) as e:  # bad input
        msg = str(e)
        if len(msg) >= 2 and msg[0] == msg[-1] and msg[0] in "'\"":  # a message that is one quoted repr
            msg = msg[1:-1]
        return fail(f"error: {msg or type(e).__name__}", 2)
    except OSError as e:  # the machine, not the input: a full disk, a name too long, ...
        hint = {28: "free disk space and run it again", 36: "use a shorter output name"}.get(e.errno, "")
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return fail(f"error: {e.strerror or e}{where}{'; ' + hint if hint else ''}", 1)
    except FloatingPointError as e:  # training diverged: a runtime failure, not bad input
        return fail(f"error: {e}", 1)
    except KeyboardInterrupt as e:  # the shell's convention: 128 + the signal (130 SIGINT, 143 SIGTERM)
        return fail(f"interrupted{': ' + str(e) if str(e) else ''}", 128 + getattr(e, "signum", 2))
    finally:  # torchrun sample/evaluate: every rank waits for rank 0 to finish writing
        if "torch" in sys.modules:
            from ..engine.devices import teardown
            teardown(finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
