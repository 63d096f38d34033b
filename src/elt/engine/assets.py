"""Building a run's pieces from its config: data, tokenizer and metric classifier (trained once and
cached under $ELT_CACHE_DIR, default ~/.cache/elt, keyed by their config and the data's content),
the network and the framework objects."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import Config
from ..data import ImageData, load_data
from ..masked import MaskedFramework, MaskedTransformer, MaskGITSampler
from ..metrics.classifier import FeatureClassifier, train_classifier
from ..tokenizers import VQVAE, PixelTokenizer, train_vqvae
from ..tokenizers.vqvae import batched, to_float
from . import precision

log = logging.getLogger("elt")


def cache_dir() -> Path:
    return Path(os.environ.get("ELT_CACHE_DIR", Path.home() / ".cache" / "elt"))


def data_fingerprint(data: ImageData) -> str:
    h = hashlib.sha1()
    h.update(str(data.images.shape).encode())
    h.update(np.ascontiguousarray(data.images).tobytes())
    h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()[:16]


def _key(kind: str, settings: dict, data: ImageData) -> str:
    blob = json.dumps({"kind": kind, "settings": settings, "data": data_fingerprint(data)}, sort_keys=True)
    return f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def load_weights(module: torch.nn.Module, path: Path, what: str,
                 fix: str = "delete it so it is rebuilt", layout=None) -> None:
    """Load a safetensors file into `module`; `layout(state)` may first re-shard it (FSDP2)."""
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{what} file {path} is unreadable ({e}); {fix}") from None
    try:
        module.load_state_dict(layout(state) if layout is not None else state)
    except RuntimeError as e:
        raise ValueError(f"{what} file {path} does not match its config ({str(e).splitlines()[0]}); {fix}") from None


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """safetensors, written to a temporary file and renamed: a crash never leaves a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def _cached(kind: str, settings: dict, data: ImageData, module: torch.nn.Module, fit, progress: bool):
    """Load `module` from the cache, or `fit()` it and store it there (atomically)."""
    path = cache_dir() / f"{_key(kind, settings, data)}.safetensors"
    if path.is_file():
        log.info("using cached %s %s", kind, path)
        load_weights(module, path, kind)
        return module.eval(), True
    fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(module, path)
    log.info("cached %s at %s", kind, path)
    return module.eval(), False


def make_tokenizer(cfg: Config, data: ImageData):
    t = cfg.tokenizer
    size, channels = data.images.shape[1], data.images.shape[3]
    if t.kind == "pixel":
        return PixelTokenizer(size, channels, levels=t.codebook_size)
    return VQVAE(size, channels, t.codebook_size, t.latent_dim, t.hidden, t.downsample_stages)


def get_tokenizer(cfg: Config, data: ImageData, seed: int = 0, progress: bool = True):
    """The run's tokenizer, trained on `data` (train split) unless the cache has it."""
    tok = make_tokenizer(cfg, data)
    if isinstance(tok, PixelTokenizer):
        return tok
    t = cfg.tokenizer
    bf16 = precision.resolve(t.precision, torch.device("cpu")) == "bf16"
    settings = {k: getattr(t, k) for k in ("codebook_size", "latent_dim", "hidden", "downsample_stages",
                                            "steps", "batch_size", "lr")} | {"seed": seed, "bf16": bf16}
    fit = lambda: train_vqvae(tok, data.images, t.steps, t.batch_size, t.lr, seed, progress, bf16)  # noqa: E731
    return _cached("vqvae", settings, data, tok, fit, progress)[0]


def get_classifier(cfg: Config, data: ImageData, progress: bool = True) -> FeatureClassifier:
    """The metric classifier, trained on the train split unless cached."""
    clf = FeatureClassifier(data.images.shape[1], data.images.shape[3], data.num_classes)
    settings = {"epochs": cfg.eval.classifier_epochs, "arch": "cnn2-128"}
    fit = lambda: train_classifier(clf, data.images, data.labels, cfg.eval.classifier_epochs, progress=progress)  # noqa: E731
    return _cached("classifier", settings, data, clf, fit, progress)[0]


def metric_prefix(cfg: Config) -> str:
    return f"{cfg.data.dataset}_cnn"


def load_split(cfg: Config, split: str) -> ImageData:
    return load_data(cfg.data.dataset, split, cfg.data.data_dir, cfg.data.image_size, cfg.data.strict_images)


@torch.no_grad()
def encode_dataset(tokenizer, data: ImageData) -> torch.Tensor:
    return batched(tokenizer.encode, to_float(data.images)).long()


def build_model(cfg: Config, codebook_size: int, num_tokens: int, num_classes: int) -> MaskedTransformer:
    m = cfg.model
    return MaskedTransformer(codebook_size, num_tokens, num_classes, m.width, m.heads,
                             m.unique_layers, m.mlp_ratio, m.dropout)


def nominal_shape(cfg: Config) -> tuple[int, int]:
    """(image size, classes) a preset implies without reading its data (for counts and benchmarks)."""
    return {"fmnist": (28, 10), "digits": (8, 10)}.get(cfg.data.dataset, (cfg.data.image_size or 256, 1000))


def token_shape(cfg: Config, image_size: int) -> int:
    """Tokens per image for the config's tokenizer."""
    t = cfg.tokenizer
    if t.kind == "pixel":
        return image_size * image_size
    return (image_size // 2 ** t.downsample_stages) ** 2


def build_framework(cfg: Config, num_classes: int, codebook_size: int) -> MaskedFramework:
    return MaskedFramework(codebook_size, num_classes, cfg.train.label_dropout, cfg.train.label_smoothing)


def build_sampler(cfg: Config) -> MaskGITSampler:
    s = cfg.sample
    return MaskGITSampler(s.steps, s.cfg, s.temp_base, s.temp_anneal, s.choice_temperature)
