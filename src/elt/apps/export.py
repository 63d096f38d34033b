"""`elt export` and `elt push`: a trained run as a Hugging Face model repository, and ONNX graphs per loop count.

    DIR/config.json          the resolved config, the data's example shape and class names, the checkpoint
                             step, which weights (EMA or raw), and the ONNX graphs' index
    DIR/model.safetensors    the network's weights (EMA unless --no-ema)
    DIR/tokenizer.safetensors  the tokenizer's, when elt trained it
    DIR/README.md            the model card: front matter (library_name: elt, license, tags, the paper's arXiv
                             id, datasets, results), what the model is, the any-time table with every
                             evaluation setting, the plot and the grid, and the three lines that load it
    DIR/anytime.json, .png   the run's any-time report and plot; anytime_grid.png (.gif for video)
    DIR/onnx/L{L}.onnx       with --format onnx: the network's forward at L loops

Weights and card go through huggingface_hub (`save_torch_state_dict`, `ModelCard`); `elt.load(DIR)` and every
`--run DIR` read the folder, `elt push` uploads it with huggingface_hub. A folder is written whole or not at
all (a temporary folder, renamed), and an existing one is replaced only with --overwrite.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

log = logging.getLogger("elt")

ARXIV = "2604.09168"
LICENSE = "apache-2.0"
# The Hub's names of the data sets elt's presets train on.
HUB_DATASETS = {"fmnist": ["zalando-datasets/fashion_mnist"], "mfmnist": ["zalando-datasets/fashion_mnist"],
                "ucf101": ["flwrlabs/ucf101"]}
CITATION = """@article{goyal2026elt,
  title   = {ELT: Elastic Looped Transformers for Visual Generation},
  author  = {Goyal and Agrawal and Anil and Jain and Paul and Kusupati},
  journal = {arXiv preprint arXiv:2604.09168},
  year    = {2026}
}"""
REPO_PLACEHOLDER = "ORG/NAME"  # the card's `elt.load(...)` line until `elt push` knows the repository


def export(run_dir: str | Path, out: str | Path, ema: bool = True, onnx_loops: list[int] | None = None,
           overwrite: bool = False, progress: bool = True) -> Path:
    """Write run `run_dir` (a run folder, or an exported one) as a Hub model folder at `out`; with
    `onnx_loops`, one ONNX graph per loop count too. Returns `out`."""
    from ..engine.run import load_run
    from ..utils.files import check_writable, refuse_existing

    run_dir, out = Path(run_dir), Path(out)
    if not str(out).strip():
        raise ValueError("--out is empty; give the export folder's path, e.g. --out exports/demo")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder path")
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} is inside the run folder {run_dir}; export to a folder of its own")
    refuse_existing([out], overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_writable(out.parent, "--out folder's parent")
    run = load_run(run_dir, "cpu", ema=None if ema else False)
    for L in onnx_loops or []:
        _check_loops(run, L)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        onnx = export_onnx(run, onnx_loops, staging, progress) if onnx_loops else {}
        write_hub_folder(run, staging, onnx)
        _usual_modes(staging)
        if out.exists():  # --overwrite: the old folder goes only once the new one is complete
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _usual_modes(folder: Path) -> None:
    """The modes a folder and its files get from the umask (a temporary folder and files start private)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _check_loops(run, loops: int) -> None:
    from ..core.loops import check_sampling_loops

    check_sampling_loops(loops, run.sampler.steps, run.cfg.model.max_loops)


def write_hub_folder(run, folder: Path, onnx: dict) -> None:
    """config.json, the weights, the tokenizer, the report files and the model card of `run` in `folder`."""
    from huggingface_hub import save_torch_state_dict

    from ..engine.run import EXPORT_CONFIG, REPORT, TOKENIZER
    from ..utils.atomic import write_json

    cfg = run.cfg
    params = sum(p.numel() for p in run.model.parameters())
    write_json(folder / EXPORT_CONFIG, {
        "library_name": "elt", "elt_version": _version(), "model_type": f"elt-{cfg.framework}",
        "framework": cfg.framework, "unique_layers": cfg.model.unique_layers, "max_loops": cfg.model.max_loops,
        "min_loops": cfg.model.min_loops, "num_parameters": params, "example_shape": list(run.example_shape),
        "class_names": list(run.class_names), "checkpoint_step": run.step, "weights": "ema" if run.ema else "raw",
        "source_run": str(run.path), "config": cfg.to_dict(), "onnx": onnx})
    # no tensor shares memory with another (the BERT layout ties its head to the embeddings): every name kept
    state = {k: v.detach().clone().contiguous() for k, v in run.model.state_dict().items()}
    # no metadata beyond huggingface_hub's own "format": safetensors writes a header map in no fixed order, and one
    # key keeps the file the same bytes every time (config.json says which weights it holds)
    save_torch_state_dict(state, folder, filename_pattern="model{suffix}.safetensors")
    if run.tokenizer.learned:
        tok = {k: v.detach().clone().contiguous() for k, v in run.tokenizer.state_dict().items()}
        save_torch_state_dict(tok, folder, filename_pattern=TOKENIZER.replace(".safetensors", "{suffix}.safetensors"))
    report = None
    if (run.path / REPORT).is_file():
        report = json.loads((run.path / REPORT).read_text())
        for name in (REPORT, "anytime.png", "anytime_grid.png", "anytime_grid.gif", "anytime_grid.mp4"):
            if (run.path / name).is_file():
                shutil.copyfile(run.path / name, folder / name)
    grids = [n for n in ("anytime_grid.png", "anytime_grid.gif") if (folder / n).is_file()]
    model_card(run, report, params, grids).save(folder / "README.md")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("elt")
    except PackageNotFoundError:  # running from a source tree that pip did not install
        return "unknown"


def model_card(run, report: dict | None, params: int, grids: list[str]):
    """The model card (huggingface_hub's ModelCard): front matter and a body generated from the run."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ..metrics.anytime import quality_keys

    cfg, m = run.cfg, run.cfg.model
    video = run.video
    kind = "class-conditional video generation" if video else "class-conditional image generation"
    tags = ["elt", "elastic-looped-transformer", "looped-transformer", "any-time-inference",
            "class-conditional-video-generation" if video else "class-conditional-image-generation",
            "maskgit" if cfg.framework == "masked" else "diffusion", f"arxiv:{ARXIV}"]
    results = []
    if report:
        fd = f"fd_{report['metric_extractor']}"
        for L, r in report["loops"].items():
            if fd in r:
                results.append(EvalResult(task_type="image-generation" if not video else "video-generation",
                                          dataset_type=cfg.data.dataset, dataset_name=cfg.data.dataset,
                                          dataset_split="test", metric_type=fd, metric_value=round(r[fd], 4),
                                          metric_name=f"Fréchet distance ({report['metric_extractor']} features), "
                                                      f"L={L}"))
    data = ModelCardData(library_name="elt", license=LICENSE, tags=tags, datasets=HUB_DATASETS.get(cfg.data.dataset),
                         model_name=cfg.name, eval_results=results or None)
    shape = " × ".join(map(str, run.example_shape))
    lines = [
        f"# {cfg.name}",
        "",
        f"An **Elastic Looped Transformer** ([ELT, arXiv {ARXIV}](https://arxiv.org/abs/{ARXIV})) for {kind}: "
        f"{m.unique_layers} unique transformer layer{'s' if m.unique_layers > 1 else ''} (width {m.width}, "
        f"{m.heads} heads) looped up to L = {m.max_loops} times, {params / 1e6:.2f}M parameters whatever L is, "
        f"trained with {'Intra-Loop Self Distillation (ILSD)' if cfg.train.objective == 'ilsd' else 'the teacher loss alone (vanilla looping)'} "
        f"so that one checkpoint samples at any loop count: fewer loops are faster, more are better. "
        f"Framework: {'masked tokens (MaskGIT-style decoding)' if cfg.framework == 'masked' else 'diffusion (a looped DiT)'}; "
        f"data: `{cfg.data.dataset}` ({len(run.class_names)} classes, samples of {shape}); tokenizer "
        f"`{cfg.tokenizer.kind}`; checkpoint step {run.step}, {'EMA' if run.ema else 'raw'} weights.",
        "",
        "## Use",
        "",
        "```python",
        "import elt",
        f"model = elt.load(\"{REPO_PLACEHOLDER}\")  # this repository's id, or the folder holding this card",
        f"images = model.generate(classes=[0, 1, 2], loops={m.max_loops}, seed=0)  # uint8 numpy, "
        f"{'(N, T, H, W, C)' if video else '(N, H, W, C)'}",
        "```",
        "",
        f"`loops` is the compute knob: any L from 1 up (trained for {m.min_loops} … {m.max_loops}); "
        f"`model.gflops(L)` says what a sample costs. From the command line: `elt sample --run DIR --loops L --n 100 "
        f"--out samples`.",
        "",
    ]
    if report:
        keys = quality_keys(report)
        s = report["sampling"]
        lines += [
            "## Any-time quality",
            "",
            "Quality, time and compute of this checkpoint at each loop count L (the same L at every sampling step): "
            "`acc_*` is the accuracy of a small classifier trained by elt on the real training images (against the "
            "class asked for), `fd_*` the Fréchet distance of its features between the samples and the test split — "
            "proxies for this data set, not FID.",
            "",
            "| L | " + " | ".join(keys) + " | seconds per sample | GFLOPs per sample |",
            "|---" * (len(keys) + 3) + "|",
        ]
        for L, r in report["loops"].items():
            cells = " | ".join(f"{r[k]:.4f}" for k in keys)
            lines.append(f"| {L} | {cells} | {r['seconds_per_sample']:.5f} | {r['gflops_per_sample']:.4f} |")
        settings = ", ".join(f"{k} {v}" for k, v in s.items())
        lines += [
            "",
            f"Evaluation settings: {settings}; checkpoint step {report['checkpoint_step']}; metric extractor "
            f"`{report['metric_extractor']}`; objective `{report['objective']}`. Reference numbers: "
            + ", ".join(f"{k} {v:.4g}" for k, v in report.get("reference", {}).items()) + ". "
            "`anytime.json` holds these numbers exactly.",
            "",
            "![quality against GFLOPs per sample](anytime.png)",
            "",
        ]
        for grid in grids:
            lines += [f"![one row per L, one column per class, the same seed in every row]({grid})", ""]
    else:
        lines += ["## Any-time quality", "", "Not measured yet: `elt evaluate --run DIR` writes the table.", ""]
    t = cfg.train
    lines += [
        "## Training",
        "",
        f"Objective `{cfg.objective_label()}`, {t.steps} steps of batch {t.batch_size}, AdamW (lr {t.lr:g}, "
        f"betas {t.beta1:g}/{t.beta2:g}, weight decay {t.weight_decay:g}), {t.lr_schedule} schedule with "
        f"{t.warmup_steps} warm-up steps, EMA {t.ema_decay:g}, seed {t.seed}. `config.json` holds the whole config.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------- ONNX


class AtLoops(torch.nn.Module):
    """The network's forward at a fixed loop count: the module torch.onnx exports (the masked network takes
    the positions to decode as a third input)."""

    def __init__(self, network, loops: int, masked: bool):
        super().__init__()
        self.network, self.loops, self.masked = network, loops, masked

    def forward(self, first, second, third):  # masked: tokens, labels, positions; diffusion: x, t, labels
        if self.masked:
            return self.network(first, second, loops=self.loops, positions=third)
        return self.network(first, second, third, loops=self.loops)


def onnx_inputs(run, batch: int = 2, seed: int = 0):
    """Random inputs of the network's forward, with their ONNX names: masked (tokens, labels, positions),
    diffusion (x, t, labels)."""
    g = torch.Generator().manual_seed(seed)
    net, classes = run.model, run.num_classes
    labels = torch.randint(0, classes + 1, (batch,), generator=g)  # the null class too (guidance)
    if run.cfg.framework == "masked":
        t = net.num_tokens
        tokens = torch.randint(0, net.mask_id + 1, (batch, t), generator=g)
        positions = torch.stack([torch.randperm(t, generator=g)[: max(2, t // 2)].sort().values for _ in range(batch)])
        return ("tokens", "labels", "positions"), (tokens, labels, positions)
    x = torch.randn(batch, net.in_channels, net.input_size, net.input_size, generator=g)
    return ("x", "t", "labels"), (x, torch.rand(batch, generator=g), labels)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx's progress lines, warnings and notes on operators elt does not use, kept off the terminal."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(run, loops: list[int], folder: Path, progress: bool = True) -> dict:
    """One ONNX graph per loop count in folder/onnx/, each checked against the PyTorch forward on random inputs
    (onnxruntime, relative error ≤ 1e-4 of the output's scale). Returns config.json's "onnx" entry."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: pip install -e '.[onnx]'") from None
    from ..utils.progress import bar

    masked = run.cfg.framework == "masked"
    names, example = onnx_inputs(run)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = ({0: batch}, {0: batch}, {0: batch, 1: torch.export.Dim("positions", min=1, max=run.model.num_tokens)}) \
        if masked else ({0: batch}, {0: batch}, {0: batch})
    (folder / "onnx").mkdir(parents=True, exist_ok=True)
    files, errors = {}, {}
    for L in bar(sorted(set(loops)), desc="onnx", progress=progress):
        path = folder / "onnx" / f"L{L}.onnx"
        module = AtLoops(run.model, L, masked).eval()
        log.info("exporting the forward at L=%d to %s", L, path)
        with _quiet_exporter():
            torch.onnx.export(module, example, str(path), input_names=list(names),
                              output_names=["logits" if masked else "prediction"], dynamic_shapes=dims, dynamo=True,
                              external_data=False, verbose=False)
        check_names, check = onnx_inputs(run, batch=3, seed=1)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: x.numpy() for n, x in zip(check_names, check)})[0]
        with torch.no_grad():
            want = module(*check).numpy()
        errors[str(L)] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        if errors[str(L)] > 1e-4:
            raise ValueError(f"the ONNX graph at L={L} differs from the PyTorch forward by {errors[str(L)]:.2g} "
                             f"(relative); the export is not kept")
        files[str(L)] = f"onnx/{path.name}"
    return {"loops": sorted(int(L) for L in files), "files": files, "inputs": list(names),
            "outputs": ["logits" if masked else "prediction"], "max_relative_error": errors,
            "opset": int(__import__("onnx").load(str(folder / files[str(min(map(int, files)))])).opset_import[0].version)}


# ---------------------------------------------------------------------------------- the Hub


def push(run_dir: str | Path, repo_id: str, ema: bool = True, private: bool = False, progress: bool = True) -> str:
    """Upload run `run_dir` as Hub model `repo_id` (an exported folder as it is; a run folder exported first),
    with huggingface_hub (the token of `hf auth login` or HF_TOKEN). Returns the commit's URL."""
    from ..engine.run import EXPORT_CONFIG
    from .model import HUB_ID, network_failure

    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:
        raise ValueError("pushing to the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from None
    if not HUB_ID.match(repo_id):
        raise ValueError(f"--repo-id {repo_id!r} is not a Hub repository id; give ORG/NAME, e.g. me/fmnist-elt")
    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="elt-push-") as tmp:
        folder = Path(tmp) / "export"
        if (run_dir / EXPORT_CONFIG).is_file():
            shutil.copytree(run_dir, folder)
        else:
            export(run_dir, folder, ema, progress=progress)
        card = folder / "README.md"
        if card.is_file():  # the card's loading line names this repository
            card.write_text(card.read_text().replace(f'elt.load("{REPO_PLACEHOLDER}")', f'elt.load("{repo_id}")'))
        api = HfApi()
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                     commit_message=f"elt export of {folder.name}")
        except OfflineModeIsEnabled:
            raise ValueError("cannot push: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); unset it on a "
                             "machine with network access") from None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                raise ValueError(f"the Hugging Face Hub refused the upload to {repo_id} ({status}); log in with "
                                 f"`hf auth login` or set HF_TOKEN to a token that may write it") from None
            raise ValueError(f"the Hugging Face Hub refused the upload to {repo_id} "
                             f"({str(e).splitlines()[0][:200]})") from None
        except Exception as e:
            if not network_failure(e):
                raise
            raise ValueError(f"cannot reach the Hugging Face Hub to push {repo_id} ({type(e).__name__}); connect to "
                             f"the network and run this again") from None
    return str(getattr(info, "commit_url", info))
