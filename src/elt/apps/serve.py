"""`elt serve --run DIR`: a local web demo of one elastic checkpoint (gradio, optional extra `elt[serve]`).

Pick a class and a loop count (or a measured schedule within a GFLOPs budget when the run has a
schedule search), press Generate: the app samples with the run's EMA weights and shows the images —
for a video run, an animated clip per sample — the time it took and the GFLOPs per sample. The same
model answers at every loop count.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engine.media import write_gif

log = logging.getLogger("elt")


def _grid(images: np.ndarray, scale: int) -> np.ndarray:
    """uint8 (N, H, W, C) → one row, upscaled (nearest) so 28-pixel images are visible; clips
    (N, T, H, W, C) → one row per frame, (T, H', W')."""
    row = np.concatenate(list(images), axis=-2)
    row = row.repeat(scale, axis=-3).repeat(scale, axis=-2)
    return row[..., 0] if row.shape[-1] == 1 else row


class Generator:
    """The app's model side, usable without gradio (and tested so)."""

    SLIDER = "the loop-count slider"

    def __init__(self, run_dir, n: int = 4, device: str = "cpu", sample_overrides: list[str] | None = None,
                 backend: str = "torch"):
        from ..engine.sampling import measured_policies
        from .model import load

        self.model = load(run_dir, device, backend, overrides=sample_overrides)
        self.run = self.model.run
        self.n = n
        self.max_loops = self.run.cfg.model.max_loops
        try:  # schedules measured by `elt evaluate` / `elt schedules`, offered as compute budgets
            measured = measured_policies(self.run)
        except (FileNotFoundError, ValueError, KeyError):
            measured = []
        self.budgets = {f"{p['name']} — {p['gflops_per_sample']:.3f} GFLOPs": p["spec"]
                        for p in sorted(measured, key=lambda p: p["gflops_per_sample"])}
        self.video = self.run.video
        self._clips = tempfile.TemporaryDirectory(prefix="elt-serve-") if self.video else None

    def __call__(self, class_name: str, loops: int, seed: int = 0, budget: str | None = None):
        """(image grid uint8, status text) for `n` samples of `class_name` at `loops` loops, or with
        the measured schedule `budget` names (one of `self.budgets`). A video run gives the path of an
        animated GIF (the clips side by side, looping) instead of the grid."""
        from ..core.loops import as_policy
        from ..engine.sampling import gflops_per_sample

        names = self.run.class_names
        if class_name not in names:
            raise ValueError(f"unknown class {class_name!r}; choose one of {names}")
        if budget and budget != self.SLIDER:
            if budget not in self.budgets:
                raise ValueError(f"unknown budget {budget!r}; choose one of {list(self.budgets)}")
            policy, what = as_policy(self.budgets[budget]), budget.split(" — ")[0]
        else:
            loops = int(loops)
            if not 1 <= loops <= self.max_loops + 2:
                raise ValueError(f"loop count {loops} is outside 1..{self.max_loops + 2}")
            policy, what = loops, f"L={loops}"
        tic = time.perf_counter()
        images = self.model.generate(classes=[class_name], n=self.n, loops=policy, seed=int(seed))
        seconds = time.perf_counter() - tic
        gflops = gflops_per_sample(self.run, policy)
        scale = max(1, 128 // images.shape[-2])
        status = (f"{class_name}: {self.n} {'clips' if self.video else 'samples'} at {what} in {seconds:.2f} s "
                  f"({gflops:.3f} GFLOPs per sample, {self.run.sample.steps} steps, seed {int(seed)})")
        if not self.video:
            return _grid(images, scale), status
        name = f"{names.index(class_name)}_{what.replace('=', '').replace(' ', '')}_seed{int(seed)}_{time.time_ns()}.gif"
        return str(write_gif(_grid(images, scale), Path(self._clips.name) / name)), status


def build_app(run_dir, n: int = 4, device: str = "cpu", sample_overrides: list[str] | None = None,
              backend: str = "torch"):
    try:
        import gradio as gr
    except ImportError:
        raise ValueError("the web demo needs gradio: pip install -e '.[serve]' (or pip install gradio)") from None
    gen = Generator(run_dir, n, device, sample_overrides, backend)
    names = gen.run.class_names
    cfg = gen.run.cfg
    with gr.Blocks(title=f"elt — {cfg.name}", analytics_enabled=False) as app:
        gr.Markdown(f"## {cfg.name}: one checkpoint, any loop count\n"
                    f"{cfg.model.unique_layers} unique layers looped L times (trained at L ≤ {gen.max_loops}).")
        with gr.Row():
            cls = gr.Radio(names, value=names[0], label="class", elem_id="class")
            with gr.Column():
                loops = gr.Slider(1, gen.max_loops + 2, value=gen.max_loops, step=1, label="loops L",
                                  elem_id="loops")
                budget = gr.Dropdown([Generator.SLIDER, *gen.budgets], value=Generator.SLIDER, elem_id="budget",
                                     label="or a measured schedule (compute budget)",
                                     visible=bool(gen.budgets))
                seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
        image = (gr.Image(label="clips", type="filepath", format="gif", elem_id="output", interactive=False)
                 if gen.video else
                 gr.Image(label="samples", type="numpy", format="png", elem_id="output", interactive=False))
        status = gr.Textbox(label="time and compute", elem_id="status", interactive=False)
        button.click(gen, inputs=[cls, loops, seed, budget], outputs=[image, status])
    return app


def serve(run_dir, host: str = "127.0.0.1", port: int = 7860, n: int = 4, block: bool = True, device: str = "cpu",
          sample_overrides: list[str] | None = None, backend: str = "torch"):
    """Start the app on host:port (this machine only by default). Returns the app when not blocking."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine
    app = build_app(run_dir, n, device, sample_overrides, backend)
    log.info("serving %s on http://%s:%d", run_dir, host, port)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
               show_error=True, quiet=not block)
    return app
