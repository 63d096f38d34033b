"""A trained run folder, loaded for sampling: its config, network (EMA weights by default), tokenizer,
checkpoint step and class names; and `data.json`, what sampling needs of the run's data."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, apply_overrides, read_config
from ..data import ImageData
from ..utils.atomic import write_text
from .build import build_model, is_learned, load_split, make_tokenizer
from .checkpoint import DAMAGED, EDITED, find_checkpoint, read_state
from .store import load_weights


@dataclass
class Run:
    path: Path
    cfg: Config
    model: torch.nn.Module
    tokenizer: torch.nn.Module
    step: int
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(path: str | Path, use_ema: bool | None = None, device: torch.device | str = "cpu",
             sample_overrides: list[str] | None = None) -> Run:
    """The run's network (EMA weights unless `use_ema=False` or the config says so) and tokenizer, both
    on `device`, from its last checkpoint; `sample_overrides` ("sample.key=value") change how it samples."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml); pass the --out folder of `elt train`")
    cfg = read_config(path / "config.yaml")
    for item in sample_overrides or []:
        if not item.strip().startswith("sample."):
            raise ValueError(f"--set {item}: only sample.* settings can change after training "
                             "(e.g. --set sample.choice_temperature=2); the rest is fixed by the checkpoint")
    cfg = apply_overrides(cfg, sample_overrides or []).validate()
    ckpt = find_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"run folder {path} has no checkpoint yet; train it first (elt train --out {path})")
    spec = path / "data.json"  # example shape and class names (runs from before it read their data)
    data = load_data_spec(spec) if spec.is_file() else load_split(cfg, "test")
    tokenizer = make_tokenizer(cfg, data)
    if is_learned(tokenizer):
        load_weights(tokenizer, path / "tokenizer.safetensors", "tokenizer",
                     "retrain the run, or copy tokenizer.safetensors from a run of the same config")
    tokenizer.eval()
    model = build_model(cfg, tokenizer, data.num_classes)
    use_ema = cfg.sample.use_ema if use_ema is None else use_ema
    weights = "ema.safetensors" if use_ema and (ckpt / "ema.safetensors").is_file() else "model.safetensors"
    cfg.sample.use_ema = weights == "ema.safetensors"  # what the reports say is what was loaded
    load_weights(model, ckpt / weights, "checkpoint", DAMAGED, mismatch=EDITED)
    step = int(read_state(ckpt)["step"])
    return Run(path, cfg, model.eval().to(device), tokenizer.to(device), step, data.class_names)


def save_data_spec(data: ImageData, path: Path) -> None:
    """What sampling needs of a run's data — the example shape and the class names — written beside
    its checkpoints, so `elt sample` needs neither the data set nor an extraction folder."""
    write_text(path, json.dumps({"example_shape": list(data.images.shape[1:]), "class_names": list(data.class_names)}))


def load_data_spec(path: Path) -> ImageData:
    """The `save_data_spec` file as data without examples (shape (0, *example_shape))."""
    try:
        spec = json.loads(Path(path).read_text())
        shape, names = [int(v) for v in spec["example_shape"]], [str(c) for c in spec["class_names"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); move it aside and elt reads the shapes and class names from the "
                         f"run's data again") from None
    return ImageData(np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64), names)
