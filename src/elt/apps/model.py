"""elt's Python API: a trained elastic model, loaded once and called.

    import elt
    model = elt.load("runs/demo")            # a run folder, an exported folder, or a Hub id "org/name"
    images = model.generate(classes=[0, 3, 7], loops=4, seed=0)       # uint8 (N, H, W, C) or (N, T, H, W, C)
    images = model.generate(n=20, loops="ramp:1:8", steps=12, guidance=2.0, seed=1)
    model.classes, model.loops, model.gflops(4)  # class names, the trained (Lmin, Lmax), GFLOPs per sample

`generate` takes the sampling settings `elt sample` takes — a loop count or a per-step schedule, adaptive
halting, a GFLOPs or latency budget, steps, guidance, seed, EMA or raw weights — with the same checks and
messages, and gives the same samples for the same settings, bit for bit: `elt sample`, `elt evaluate`,
`elt serve` and `elt api` hold their model through this object. `backend="onnxruntime"` runs the network
through the ONNX graphs `elt export --format onnx` wrote (one per loop count), the sampling loop unchanged.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("elt")

BACKENDS = ("torch", "onnxruntime")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name", as the Hugging Face Hub spells a repository


def load(source: str | Path, device: str = "auto", backend: str = "torch", ema: bool | None = None,
         steps: int | None = None, guidance: float | None = None, overrides: list[str] | None = None,
         revision: str | None = None) -> "ElasticModel":
    """A trained model from a run folder (`elt train --out`), an exported folder (`elt export --out`) or a
    Hugging Face Hub id ("org/name", downloaded once into huggingface_hub's cache). `device`: auto (a CUDA
    GPU when one is visible), cpu or cuda. `backend`: torch, or onnxruntime (an exported folder's ONNX
    graphs). `ema`: False for the raw weights (default: the config's, EMA). `steps`, `guidance` and
    `overrides` ("sample.key=value") set the sampling defaults of every call."""
    from ..config import check_count, check_guidance
    from ..engine.devices import resolve_device
    from ..engine.run import load_run

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one elt has; choose {' or '.join(BACKENDS)}")
    steps = None if steps is None else _checked("steps", check_count, steps)
    guidance = None if guidance is None else _checked("guidance", check_guidance, guidance)
    folder = _locate(source, revision)
    run = load_run(folder, str(resolve_device(device)), ema, steps, guidance, overrides)
    return ElasticModel(run, backend)


def _locate(source: str | Path, revision: str | None) -> Path:
    """A local folder as it is; a Hub id downloaded through huggingface_hub's cache (the only run-time
    download elt makes)."""
    path = Path(source).expanduser()
    if path.exists() or not HUB_ID.match(str(source)):
        return path
    return hub_download(str(source), revision)


def hub_download(repo_id: str, revision: str | None = None) -> Path:
    """The files of Hub model `repo_id` in huggingface_hub's cache (downloaded when missing or stale)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError:
        raise ValueError("loading from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from None
    if not sys.stderr.isatty():  # progress bars only on a terminal, as elt's own
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ValueError(f"no model {repo_id!r} on the Hugging Face Hub that this login may read; check the id, or log "
                         f"in (`hf auth login`, or set HF_TOKEN) for a private one") from None
    except RevisionNotFoundError:
        raise ValueError(f"model {repo_id!r} has no revision {revision!r} on the Hugging Face Hub; check --revision") \
            from None
    except LocalEntryNotFoundError:
        raise ValueError(f"cannot download {repo_id!r}: the Hugging Face Hub is out of reach (offline) and its files "
                         f"are not in the local cache; connect to the network, or pass a local folder written by "
                         f"`elt export`") from None
    except Exception as e:
        if not network_failure(e):
            raise
        raise ValueError(f"cannot download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}); connect to the "
                         f"network, or pass a local folder written by `elt export`") from None


def network_failure(error: BaseException) -> bool:
    """Whether `error` is the network failing (no route, refused, timed out) rather than a bug: OSErrors and the
    transport errors of the HTTP clients huggingface_hub uses."""
    return isinstance(error, OSError) or type(error).__module__.split(".")[0].rstrip("0123456789") in (
        "httpx", "httpcore", "requests", "urllib3")


def _checked(name: str, check, value):
    try:
        return check(value)
    except ValueError as e:
        raise ValueError(f"{name} {e}") from None


class ElasticModel:
    """One trained elastic model: the engine's `Run` (its config, network, tokenizer, class names and
    sampling settings) behind the checks every door shares. `generate` samples; `request` resolves what a
    call asks for into (run, loop policy, how it was chosen, labels) for the callers that write files."""

    def __init__(self, run, backend: str = "torch"):
        self.run, self.backend = run, backend
        self._runs = {run.ema: run}  # the other weights (EMA or raw) are loaded when first asked for
        if backend == "onnxruntime":
            self.run.model = OnnxNetwork.from_folder(run.path, run.model)

    @property
    def classes(self) -> list[str]:
        return list(self.run.class_names)

    @property
    def loops(self) -> tuple[int, int]:
        """The loop counts it was trained at: (Lmin, Lmax)."""
        m = self.run.cfg.model
        return m.min_loops, m.max_loops

    @property
    def framework(self) -> str:
        return self.run.cfg.framework

    @property
    def example_shape(self) -> tuple[int, ...]:
        """One sample's shape: (H, W, C) images or (T, H, W, C) clips."""
        return tuple(self.run.example_shape)

    def __repr__(self) -> str:
        (lmin, lmax), c = self.loops, self.run.cfg
        return (f"ElasticModel({c.name}: {c.model.unique_layers} unique layers looped {lmin}..{lmax} times, "
                f"{self.framework}, {len(self.classes)} classes, {self.example_shape}, checkpoint {self.run.step}, "
                f"{'EMA' if self.run.ema else 'raw'} weights, {self.backend})")

    def gflops(self, loops=None, steps: int | None = None, guidance: float | None = None) -> float:
        """Network GFLOPs of one sample at `loops` (a count or a schedule; default Lmax) with the model's
        sampling settings, or `steps`/`guidance` (guidance doubles the batch; the decoder is not counted)."""
        from ..engine.sampling import gflops_per_sample

        run, policy, _, _ = self.request(n=1, loops=self.loops[1] if loops is None else loops, steps=steps,
                                         guidance=guidance)
        return gflops_per_sample(run, policy)

    def generate(self, classes=None, n: int | None = None, loops=None, *, adaptive: float | None = None,
                 budget_gflops: float | None = None, budget_ms: float | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, ema: bool | None = None,
                 progress: bool = False) -> np.ndarray:
        """uint8 samples: images (N, H, W, C) or clips (N, T, H, W, C).

        classes: class ids or names, one sample each (cycled when `n` is larger); n: class-balanced samples
        (default: one per class, or one per entry of `classes`). Exactly one of loops (a loop count, a
        per-step list, or a schedule such as "ramp:1:8"; default Lmax), adaptive (a halting threshold),
        budget_gflops or budget_ms (the best policy measured by `elt evaluate`/`elt schedules` that fits).
        steps, guidance: this call's sampling steps and guidance scale (default: the model's). seed: same
        seed and settings, same samples. ema: False for the raw weights."""
        from ..engine.sampling import generate

        run, policy, _, labels = self.request(classes, n, loops, adaptive, budget_gflops, budget_ms, steps, guidance,
                                              seed, ema, progress)
        return generate(run, policy, labels, seed, progress=progress)

    def request(self, classes=None, n: int | None = None, loops=None, adaptive: float | None = None,
                budget_gflops: float | None = None, budget_ms: float | None = None, steps: int | None = None,
                guidance: float | None = None, seed: int = 0, ema: bool | None = None, progress: bool = False):
        """(the run with this call's settings, the loop policy, how it was chosen, the labels) — every value
        checked, one clear error naming the argument otherwise."""
        from ..config import check_count, check_finite, check_guidance, check_seed
        from ..engine.sampling import balanced_labels, choose_policy

        _checked("seed", check_seed, seed)
        ids = None if classes is None else self._class_ids(classes)
        if n is not None:
            _checked("n", check_count, n)
        count = n if n is not None else (len(ids) if ids is not None else len(self.classes))
        labels = balanced_labels(count, len(self.classes), ids)
        chosen = [k for k, v in (("loops", loops), ("adaptive", adaptive), ("budget_gflops", budget_gflops),
                                 ("budget_ms", budget_ms)) if v is not None]
        if len(chosen) > 1:
            raise ValueError(f"{', '.join(chosen)}: give one (a loop count or schedule, an adaptive threshold, or a "
                             f"budget)")
        if not chosen:
            loops = self.loops[1]
        for name, value in (("adaptive", adaptive), ("budget_gflops", budget_gflops), ("budget_ms", budget_ms)):
            if value is not None:
                _checked(name, lambda v: check_finite(v, 0, strict=name != "adaptive"), value)
        if isinstance(loops, bool) or (isinstance(loops, int) and loops < 1):
            raise ValueError(f"loops must be a loop count >= 1 or a schedule such as 'ramp:1:8', got {loops!r}")
        run = self._run(ema)
        changes = {}
        if steps is not None:
            changes["steps"] = _checked("steps", check_count, steps)
        if guidance is not None:
            changes["guidance"] = _checked("guidance", check_guidance, guidance)
        if changes:
            run = run.with_sample(**changes)
        run, policy, how = choose_policy(run, loops, adaptive, budget_gflops, budget_ms, progress=progress)
        return run, policy, how, labels

    def _class_ids(self, classes) -> list[int]:
        if isinstance(classes, (str, int)):
            classes = [classes]
        ids = []
        for c in classes:
            if isinstance(c, str) and c in self.classes:
                ids.append(self.classes.index(c))
            elif isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                ids.append(int(c))
            else:
                raise ValueError(f"classes: {c!r} is neither a class id (0..{len(self.classes) - 1}) nor a class "
                                 f"name of this model ({', '.join(self.classes[:10])}{', …' if len(self.classes) > 10 else ''})")
        return ids

    def _run(self, ema: bool | None):
        from ..engine.run import load_run

        if ema is None or ema == self.run.ema:
            return self.run
        if ema not in self._runs:
            r = self.run
            other = load_run(r.path, str(r.device), ema=ema)
            other = other.with_sample(**{k: getattr(r.sample, k) for k in vars(r.sample) if k != "use_ema"})
            if self.backend == "onnxruntime":
                raise ValueError("the ONNX graphs hold one set of weights; use backend='torch' for the other")
            self._runs[ema] = other
        return self._runs[ema]


class OnnxNetwork:
    """An exported network's ONNX graphs (one per loop count) behind the calls the samplers make:
    `network(*inputs, loops=L[, positions=...])`. Shapes, FLOPs and ids come from the PyTorch network it
    was exported from (`meta`), so the decoding loop runs unchanged."""

    backend = "onnxruntime"

    def __init__(self, sessions: dict, meta, folder: Path):
        self.sessions, self.meta, self.folder = sessions, meta, folder

    @classmethod
    def from_folder(cls, folder: Path, meta) -> "OnnxNetwork":
        from ..engine.run import read_export

        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("backend onnxruntime needs onnxruntime: pip install -e '.[onnx]'") from None
        folder = Path(folder)
        files = read_export(folder)["onnx"].get("files", {}) if (folder / "config.json").is_file() else {}
        if not files:
            raise ValueError(f"{folder} holds no ONNX graphs; write them with `elt export --run RUN --format onnx "
                             f"--loops 1,4,8 --out DIR` and pass that DIR")
        import torch

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        sessions = {int(L): ort.InferenceSession(str(folder / f), options, providers=["CPUExecutionProvider"])
                    for L, f in files.items()}
        return cls(sessions, meta, folder)

    def __getattr__(self, name):  # num_tokens, mask_id, null_class, flops, ... of the PyTorch network
        return getattr(self.meta, name)

    def parameters(self):
        return self.meta.parameters()

    def __call__(self, *inputs, loops: int, positions=None):
        import torch

        session = self.sessions.get(loops)
        if session is None:
            raise ValueError(f"{self.folder} has no ONNX graph for L={loops} (exported: "
                             f"{', '.join(map(str, sorted(self.sessions)))}); sample at one of those, or export it "
                             f"(elt export --format onnx --loops ...)")
        names = [i.name for i in session.get_inputs()]
        feed = [x.detach().cpu().numpy() for x in inputs]
        if "positions" in names:  # the masked head decodes the positions asked for (default: all of them)
            b, t = inputs[0].shape
            feed.append((torch.arange(t).expand(b, t) if positions is None else positions).cpu().numpy())
        out = session.run(None, dict(zip(names, feed)))[0]
        return torch.from_numpy(out).to(inputs[0].device)

    def forward_groups(self, *inputs, loops: list[int], positions=None):
        """Guidance at fewer loops: each group of the batch through its own loop count's graph."""
        import torch

        n = inputs[0].shape[0] // len(loops)
        return torch.cat([self(*(x[g * n:(g + 1) * n] for x in inputs), loops=L,
                               positions=None if positions is None else positions[g * n:(g + 1) * n])
                          for g, L in enumerate(loops)])

    def forward_adaptive(self, *a, **k):
        raise ValueError("adaptive halting runs the network loop by loop: it needs backend torch (an ONNX graph is "
                         "one fixed loop count)")
