"""The run folder: what it holds, who may write it, and the trained run read back from it.

    RUN/config.yaml          the resolved config (itself a valid --config)
    RUN/data.json            the example shape and class names: the run samples without its data set
    RUN/tokenizer.safetensors  the tokenizer elt trained for it (when it has weights)
    RUN/checkpoints/last/    model, EMA, optimizer, step and RNG (checkpoint.py)
    RUN/metrics.jsonl        one record per logged training step
    RUN/anytime.json, .png   the any-time report; RUN/eval/ a copy per sampling setting
    RUN/latency.json         measured milliseconds per sample (budgets, the HTTP service)
    RUN/frontier.json, .png  `elt schedules`' frontier of loops × steps × guidance loops (× solver)
    RUN/.elt.lock            held by the one process writing the folder

The rules: a new run goes into a new, empty or elt folder; `--resume` keeps the config (only the step count
may grow); one writer at a time (`RunLock`, an advisory `flock` the OS drops with its process); training
metrics survive a crash (`MetricsLog`, `trim_metrics`). `load_run` gives the one object a trained model is
held by: `Run` — its config as trained, its network and tokenizer, its class names, and the sampling
settings resolved once (the run's config, then the caller's overrides) with the sampler built from them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from ..config import Config, ConfigError, SampleConfig, apply_overrides, from_dict, read_config
from ..utils.atomic import write_text
from ..utils.files import check_writable, entries
from .build import build_model, build_sampler, make_tokenizer
from .checkpoint import EDITED, damaged, find_checkpoint, hash_weights, load_weights, read_state
from .devices import rank_world, resolve_precision

CONFIG, DATA_SPEC, TOKENIZER, METRICS, REPORT = "config.yaml", "data.json", "tokenizer.safetensors", "metrics.jsonl", \
    "anytime.json"
LATENCY, FRONTIER = "latency.json", "frontier.json"
EXPORT_CONFIG, EXPORT_WEIGHTS = "config.json", "model.safetensors"  # an exported folder (`elt export`)
LOCK_NAME = ".elt.lock"
RUN_MARKERS = ("checkpoints", DATA_SPEC, LOCK_NAME)  # what a folder elt trains into holds from its start
# A run's and an export's own files and folders: never an output path, whatever --overwrite says.
OWN = {"run": ({CONFIG, DATA_SPEC, TOKENIZER, METRICS, REPORT, "anytime.png", "anytime_grid.png", "anytime_grid.gif",
                "anytime_grid.mp4", "timing.json", LATENCY, FRONTIER, "frontier.png", LOCK_NAME},
               {"checkpoints", "eval", "tensorboard"}),
       "export": ({EXPORT_CONFIG, EXPORT_WEIGHTS, TOKENIZER, "README.md", REPORT, "anytime.png", "anytime_grid.png",
                   "anytime_grid.gif", "anytime_grid.mp4", LATENCY}, {"onnx", "eval"})}


def folder_kind(path: Path) -> str | None:
    """"run" for a run folder elt trains into, "export" for an exported folder, else None."""
    if (path / CONFIG).is_file() and any((path / m).exists() for m in RUN_MARKERS):
        return "run"
    if (path / EXPORT_CONFIG).is_file() and (path / EXPORT_WEIGHTS).exists():
        return "export"
    return None


def refuse_own_files(paths, what: str = "output") -> None:
    """One clear error when an output path is one of a run's (or an export's) own files or lies in its
    checkpoints, eval or tensorboard folder: those belong to the run (a checkpoint replaces its folder
    whole, a report its plot), with or without --overwrite."""
    for given in paths:
        path = Path(given).absolute()
        for parent in path.parents:
            kind = folder_kind(parent)
            if kind is None:
                continue
            files, folders = OWN[kind]
            rel = path.relative_to(parent).parts
            if rel[0] in folders or (len(rel) == 1 and rel[0] in files):
                raise ValueError(f"{what} {given} is one of the {kind} folder {parent}'s own files "
                                 f"({rel[0]}{'/…' if rel[0] in folders else ''}); elt never writes an output there, "
                                 f"even with --overwrite: choose another path (e.g. {parent}/samples/…)")
            break


# ---------------------------------------------------------------------------------- one writer


class RunLock:
    """One writer per run folder: an advisory lock (`fcntl.flock`) on `RUN/.elt.lock`, taken by `elt train`,
    `elt evaluate`, `elt schedules` and `elt demo` for as long as they write there. A second writer gets
    one line naming the holder's pid and command. The operating system drops a flock when its process
    ends, however it ends, so the lock of a killed process is reclaimed by the next writer; the file (its
    last holder's pid) stays and is harmless. Under torchrun only rank 0 locks."""

    def __init__(self, folder: str | Path, what: str = ""):
        self.folder, self.what = Path(folder), what or " ".join(Path(a).name for a in sys.argv[:2])
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ValueError(f"cannot write to run folder {self.folder} ({e.strerror}); choose a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ValueError(f"run folder {self.folder} is in use by another elt process ({holder}); wait for it to "
                             f"finish, or stop it, then run this again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {self.what}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 4096).decode(errors="replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


@contextmanager
def run_writer(folder: str | Path, what: str):
    """For the time of the block: `folder` checked writable (before any work) and locked by rank 0."""
    check_writable(folder, "run folder")
    if rank_world()[0] != 0:
        yield
        return
    with RunLock(folder, what):
        yield


# ---------------------------------------------------------------------------------- a new or resumed run


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Checks before any work: `out` is a folder elt may write a run into (new, empty, or an elt run —
    with a checkpoint only under --resume), and writable. Creates it."""
    out = Path(out)
    if not str(out).strip():
        raise ValueError("--out is empty; give the run folder's path, e.g. --out runs/first")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder path")
    if not resume and find_checkpoint(out) is not None:
        raise ValueError(f"run folder {out} already holds a checkpoint; pass --resume to continue it "
                         f"or choose another --out")
    held = sorted(p.name for p in entries(out)) if out.is_dir() else []
    if held and not any((out / m).exists() for m in RUN_MARKERS):
        raise ValueError(f"--out {out} holds files that are not an elt run ({', '.join(held[:4])}, ...); choose a new "
                         f"or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create run folder {out} ({e.strerror}); choose a writable --out") from None
    check_writable(out, "run folder")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _differ(a: Config, b: Config) -> list[str]:
    """The keys two configs differ in, train.steps aside (a resume may train longer)."""
    x, y = _flat(a.to_dict()), _flat(b.to_dict())
    return [k for k in x.keys() | y.keys() if k != "train.steps" and x.get(k) != y.get(k)]


def check_resume_config(cfg: Config, out: Path, checkpoint: Path) -> None:
    """A resumed run keeps the config its checkpoint was trained with (stored with the checkpoint; RUN/config.yaml
    for runs from before), only train.steps may grow; and RUN/config.yaml, which a user may edit, must still be
    that config."""
    from .checkpoint import CHECKPOINT_CONFIG

    saved_path = Path(out) / CONFIG
    trained_path = checkpoint / CHECKPOINT_CONFIG if (checkpoint / CHECKPOINT_CONFIG).is_file() else saved_path
    if not trained_path.is_file():
        return
    trained = read_config(trained_path)
    if saved_path.is_file() and trained_path != saved_path and (edited := _differ(read_config(saved_path), trained)):
        raise ConfigError(f"{saved_path} differs from the config its checkpoint was trained with in "
                          f"{', '.join(sorted(edited))}: it was edited; restore it (the checkpoint's copy is "
                          f"{trained_path}) before resuming")
    diff = _differ(cfg, trained)
    if diff:
        raise ConfigError(f"--resume with a config that differs from the one the checkpoint was trained with in "
                          f"{', '.join(sorted(diff))}; resume with --config {saved_path} (only --steps may change)")


class MetricsLog:
    """metrics.jsonl in the run folder, mirrored to tensorboard (run/tensorboard) when it is installed."""

    def __init__(self, out: Path):
        self.file = (Path(out) / METRICS).open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(out) / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            self.tb = None

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop records past the checkpoint (the steps are trained again) and a line a crash
    cut short, so metrics.jsonl reads as one uninterrupted run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    write_text(path, "".join(f"{line}\n" for line in kept))


def save_data_spec(example_shape: tuple[int, ...], class_names: list[str], path: Path) -> None:
    """What sampling needs of a run's data — the example shape and the class names — written beside
    its checkpoints, so `elt sample` needs neither the data set nor an extraction folder."""
    write_text(path, json.dumps({"example_shape": list(example_shape), "class_names": list(class_names)}))


def load_data_spec(path: Path) -> tuple[tuple[int, ...], list[str]]:
    """(example shape, class names) of a `save_data_spec` file."""
    try:
        spec = json.loads(Path(path).read_text())
        return tuple(int(v) for v in spec["example_shape"]), [str(c) for c in spec["class_names"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); restore it from a run of the same config (it holds the "
                         f"example shape and the class names)") from None


def read_report(path: Path) -> dict:
    """An any-time report (`anytime.json`) as written by `evaluation.write_report`."""
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------- the trained run


def settings_tag(sampling: dict, checkpoint_step: int, seed: int, n: int | None = None, loops=None) -> str:
    """The one name of a sampling setting, for report copies and sample folders alike: checkpoint, loops,
    steps, guidance, the sampler's own settings, seed, count, and bf16 / the network's runtime / raw weights
    where they apply."""
    s = sampling
    parts = [f"ckpt{checkpoint_step}"] + ([f"L{loops}"] if loops is not None else []) + [f"K{s['steps']}",
                                                                                         f"guidance{s['guidance']:g}"]
    if "sampler" in s:  # diffusion: the solver
        parts.append(str(s["sampler"]))
    if "temp_base" in s:  # masked: the sampling and choice temperatures
        parts += [f"temp{s['temp_base']:g}+{s['temp_anneal']:g}", f"choice{s['choice_temperature']:g}"]
    parts += [f"seed{seed}"] + ([f"n{n}"] if n is not None else [])
    parts += [f"gl{s['guidance_loops']}"] if s.get("guidance_loops") is not None else []
    parts += [f"motion{s['motion_order']}"] if "motion_order" in s else []  # a video's motion token, first or last
    parts += [f"mtemp{s['motion_temperature']:g}"] if "motion_temperature" in s else []  # ... and its temperature
    parts += ["bf16"] if s.get("precision") == "bf16" else []
    parts += [s["backend"]] if s.get("backend", "torch") != "torch" else []
    parts += ["raw"] if s.get("ema") is False else []
    return "_".join(str(p).replace("/", "-").replace(" ", "") for p in parts)


@dataclass
class Run:
    """A trained model: the run folder's config as trained (never changed), its network (EMA or raw
    weights) and tokenizer, its checkpoint step and class names, and the sampling settings in force —
    resolved once by `load_run` — with the sampler built from them."""
    path: Path
    cfg: Config
    model: torch.nn.Module
    tokenizer: torch.nn.Module
    step: int
    class_names: list[str]
    example_shape: tuple[int, ...]  # one image (H, W, C) or clip (T, H, W, C)
    sample: SampleConfig     # the sampling settings in force (the run's, then the caller's; use_ema: what loaded)
    sampler: object          # built from `sample`

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def video(self) -> bool:
        return len(self.example_shape) == 4

    @property
    def ema(self) -> bool:
        return self.sample.use_ema

    @cached_property
    def weights_digest(self) -> str:
        """A short digest of the network's weights: which run and checkpoint made a set of samples."""
        net = getattr(self.model, "meta", self.model)  # an ONNX backend: the network it was exported from
        return hash_weights(net).hexdigest()[:12]

    def settings(self) -> dict:
        """Every setting that changes the samples, for reports and output names: the sampler's own, the
        precision the network runs in, EMA or raw weights, the kind of device."""
        settings = {**self.sampler.settings(), "precision": resolve_precision(self.sample.precision, self.device),
                    "ema": self.ema, "device": self.device.type}
        backend = getattr(type(self.model), "backend", "torch")  # the network's runtime (an ONNX graph: onnxruntime)
        return settings if backend == "torch" else {**settings, "backend": backend}

    def tag(self, seed: int, n: int | None = None, loops=None) -> str:
        return settings_tag(self.settings(), self.step, seed, n, loops)

    def with_sample(self, **changes) -> "Run":
        """The same weights under other sampling settings (`sample.*` fields), checked like the config."""
        sample = dataclasses.replace(self.sample, **changes)
        dataclasses.replace(self.cfg, sample=sample).validate()
        check_steps(self.cfg, self.model, sample)
        return dataclasses.replace(self, sample=sample, sampler=build_sampler(self.cfg, self.tokenizer, sample))


def check_steps(cfg: Config, model, sample: SampleConfig) -> None:
    """Masked decoding fixes at least one token per step: more steps than a sample has tokens cannot run."""
    if cfg.framework == "masked" and sample.steps > model.num_tokens:
        raise ValueError(f"{sample.steps} decoding steps (--steps, sample.steps) are more than the {model.num_tokens} "
                         f"tokens of a sample: masked decoding fixes at least one token per step; use at most "
                         f"{model.num_tokens}")


@dataclass
class Stored:
    """Where a trained model's pieces are, in a run folder or an exported folder."""
    cfg: Config
    example_shape: tuple[int, ...]
    class_names: list[str]
    step: int
    weights: dict[bool, Path]  # EMA (True) or raw (False) → the network's safetensors file, those present
    tokenizer: Path
    damaged: str               # the fix for a weight file that does not read
    mismatch: str              # the fix for weights that read but do not fit the config's network


def stored(path: Path) -> Stored:
    """The pieces of a run folder (`config.yaml`, the last checkpoint) or of an exported folder (`config.json`,
    `model.safetensors`: what `elt export` writes, in the Hugging Face Hub layout)."""
    if (path / CONFIG).is_file():
        cfg = read_config(path / CONFIG)
        ckpt = find_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"run folder {path} has no checkpoint yet; train it first (elt train --out {path})")
        if not (path / DATA_SPEC).is_file():
            raise FileNotFoundError(f"{path / DATA_SPEC} is missing (the example shape and class names); restore it "
                                    f"from a run of the same config")
        shape, names = load_data_spec(path / DATA_SPEC)
        weights = {ema: ckpt / name for ema, name in ((True, "ema.safetensors"), (False, "model.safetensors"))
                   if (ckpt / name).is_file()}
        if not weights:
            raise FileNotFoundError(f"checkpoint {ckpt} holds no weights file; {damaged(ckpt)}")
        return Stored(cfg, shape, names, int(read_state(ckpt)["step"]), weights, path / TOKENIZER, damaged(ckpt),
                      EDITED)
    if (path / EXPORT_CONFIG).is_file():
        meta = read_export(path)
        weights = path / EXPORT_WEIGHTS
        if not weights.is_file():  # a large model is saved in shards with an index
            weights = path / f"{EXPORT_WEIGHTS}.index.json"
        if not weights.is_file():
            raise FileNotFoundError(f"exported folder {path} has no {EXPORT_WEIGHTS}; export the run again "
                                    f"(elt export --run RUN --out {path} --overwrite)")
        again = f"export the run again (elt export --run RUN --out {path} --overwrite)"
        return Stored(meta["cfg"], meta["example_shape"], meta["class_names"], meta["step"],
                      {meta["weights"] == "ema": weights}, path / TOKENIZER, again,
                      f"its {EXPORT_CONFIG} builds another network than {EXPORT_WEIGHTS} holds; {again}")
    what = "a file" if path.is_file() else "missing" if not path.exists() else "a folder without config.yaml or " \
                                                                                 "config.json"
    raise FileNotFoundError(f"{path} is not a run folder nor an exported model ({what}); pass the --out folder of "
                            f"`elt train` or of `elt export`")


def read_export(path: Path) -> dict:
    """An exported folder's config.json: the config as trained, the data's shape and class names, the
    checkpoint step and which weights it holds."""
    file = Path(path) / EXPORT_CONFIG
    try:
        meta = json.loads(file.read_text())
        if meta.get("library_name") != "elt":
            raise ValueError(f"its library_name is {meta.get('library_name')!r}, not 'elt'")
        return {"cfg": from_dict(meta["config"]).validate(), "example_shape": tuple(int(v) for v in meta["example_shape"]),
                "class_names": [str(c) for c in meta["class_names"]], "step": int(meta["checkpoint_step"]),
                "weights": meta["weights"], "onnx": meta.get("onnx", {})}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{file} is not an elt model's config ({str(e).splitlines()[0][:200]}); export the run "
                         f"again (elt export --run RUN --out {path})") from None


def load_run(path: str | Path, device: torch.device | str = "cpu", ema: bool | None = None,
             steps: int | None = None, guidance: float | None = None, overrides: list[str] | None = None) -> Run:
    """A trained model from a run folder or an exported folder, network and tokenizer on `device`, with its
    sampling settings resolved once: the config's, then `overrides` ("sample.key=value"), then
    `steps`/`guidance`/`ema` when given (EMA weights unless `ema=False` or the config says so; a run that
    kept none samples its raw weights)."""
    path = Path(path)
    where = stored(path)
    cfg = where.cfg
    for item in overrides or []:
        if not item.strip().startswith("sample."):
            raise ValueError(f"--set {item}: only sample.* settings can change after training "
                             "(e.g. --set sample.choice_temperature=2); the rest is fixed by the checkpoint")
    wanted = apply_overrides(dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample)), overrides or [])
    wanted.sample = dataclasses.replace(wanted.sample, **{k: v for k, v in (("steps", steps), ("guidance", guidance))
                                                          if v is not None})
    sample = wanted.validate().sample
    use_ema = sample.use_ema if ema is None else ema
    if use_ema not in where.weights:
        if (path / CONFIG).is_file() or ema is None:  # a run that kept no EMA: its raw weights
            use_ema = not use_ema
        else:
            held = "EMA" if True in where.weights else "raw"
            raise ValueError(f"{path} holds the {held} weights only; sample them (drop --no-ema), or export the run "
                             f"again with{'' if held == 'EMA' else 'out'} --no-ema")
    tokenizer = make_tokenizer(cfg, where.example_shape)
    if tokenizer.learned:
        load_weights(tokenizer, where.tokenizer, "tokenizer",
                     "retrain the run, or copy tokenizer.safetensors from a run of the same config")
    model = build_model(cfg, tokenizer.eval(), len(where.class_names))
    check_steps(cfg, model, sample)
    what = "checkpoint" if (path / CONFIG).is_file() else "model"
    if where.weights[use_ema].name.endswith(".index.json"):  # shards of an export: huggingface_hub's loader
        from huggingface_hub import load_torch_model
        try:
            load_torch_model(model, path, strict=True, filename_pattern="model{suffix}.safetensors")
        except Exception as e:  # its errors are safetensors', torch's and its own
            raise ValueError(f"{what} shards in {path} do not load ({str(e).splitlines()[0][:200]}); "
                             f"{where.damaged}") from None
    else:
        load_weights(model, where.weights[use_ema], what, where.damaged, mismatch=where.mismatch)
    sample = dataclasses.replace(sample, use_ema=use_ema)
    return Run(path, cfg, model.eval().to(device), tokenizer.to(device), where.step, where.class_names,
               where.example_shape, sample, build_sampler(cfg, tokenizer, sample))
