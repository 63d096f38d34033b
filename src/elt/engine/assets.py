"""Building a run's pieces from its config: data, tokenizer and metric classifier (trained once and
cached under $ELT_CACHE_DIR, default ~/.cache/elt, keyed by their config and the data's content),
the network and the framework objects."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import Config
from ..data import ImageData, load_data
from ..diffusion import DiffusionFramework, DiffusionSampler, DiT, LogSNRSchedule
from ..masked import MaskedFramework, MaskedTransformer, MaskGITSampler
from ..metrics.classifier import FeatureClassifier, train_classifier
from ..tokenizers import KLVAE, VQVAE, DiffusersVAE, PixelSpace, PixelTokenizer, train_klvae, train_vqvae
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


def save_tensors(tensors: dict, path: Path) -> None:
    """safetensors, written to a temporary file and renamed: a crash never leaves a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def save_weights(module: torch.nn.Module, path: Path) -> None:
    save_tensors(module.state_dict(), path)


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
    """The run's tokenizer (masked) or codec (diffusion), untrained."""
    t = cfg.tokenizer
    size, channels = data.images.shape[1], data.images.shape[3]
    if cfg.framework == "diffusion":
        if t.kind == "pixel":
            return PixelSpace(size, channels, t.pad_to)
        if t.kind == "diffusers_vae":
            return DiffusersVAE(t.path, size, channels)
        return KLVAE(size, channels, t.latent_dim, t.hidden, t.downsample_stages, t.kl_weight)
    if t.kind == "pixel":
        return PixelTokenizer(size, channels, levels=t.codebook_size)
    return VQVAE(size, channels, t.codebook_size, t.latent_dim, t.hidden, t.downsample_stages)


def is_learned(tokenizer) -> bool:
    """Whether the tokenizer has weights elt trains (and a run folder keeps)."""
    return isinstance(tokenizer, (VQVAE, KLVAE))


def get_tokenizer(cfg: Config, data: ImageData, seed: int = 0, progress: bool = True):
    """The run's tokenizer, trained on `data` (train split) unless the cache has it."""
    tok = make_tokenizer(cfg, data)
    if not is_learned(tok):
        return tok
    t = cfg.tokenizer
    bf16 = precision.resolve(t.precision, torch.device("cpu")) == "bf16"
    keys = ["codebook_size", "latent_dim", "hidden", "downsample_stages", "steps", "batch_size", "lr"]
    kind, train_fn = "vqvae", train_vqvae
    if isinstance(tok, KLVAE):
        keys.remove("codebook_size")
        keys.append("kl_weight")
        kind, train_fn = "klvae", train_klvae
    settings = {k: getattr(t, k) for k in keys} | {"seed": seed, "bf16": bf16}
    fit = lambda: train_fn(tok, data.images, t.steps, t.batch_size, t.lr, seed, progress, bf16)  # noqa: E731
    return _cached(kind, settings, data, tok, fit, progress)[0]


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
    """Token ids (masked) or latents (diffusion) of every image. A learned or pretrained codec's
    latents are computed once and cached, keyed by its weights and the data."""
    images = to_float(data.images)
    if not isinstance(tokenizer, (KLVAE, DiffusersVAE)):
        return batched(tokenizer.encode, images)
    h = hashlib.sha1(data_fingerprint(data).encode())
    for name, v in sorted(tokenizer.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    path = cache_dir() / f"latents-{h.hexdigest()[:16]}.safetensors"
    if path.is_file():
        try:
            latents = load_file(str(path))["latents"]
            if latents.shape == (len(images), *tokenizer.latent_shape):
                log.info("using cached latents %s", path)
                return latents
        except Exception:  # a damaged cache entry is recomputed
            pass
    log.info("encoding %d images to latents %s", len(images), tuple(tokenizer.latent_shape))
    latents = batched(tokenizer.encode, images, 256).float()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({"latents": latents}, path)
    return latents


def build_model(cfg: Config, tokenizer, num_classes: int) -> torch.nn.Module:
    """The framework's network for a tokenizer (or any object with its shape attributes:
    `codebook_size` and `num_tokens` for masked, `latent_shape` for diffusion)."""
    m = cfg.model
    if cfg.framework == "diffusion":
        c, h, w = tokenizer.latent_shape
        return DiT(h, c, num_classes, m.patch_size, m.width, m.heads, m.unique_layers, m.mlp_ratio)
    return MaskedTransformer(tokenizer.codebook_size, tokenizer.num_tokens, num_classes, m.width, m.heads,
                             m.unique_layers, m.mlp_ratio, m.dropout)


def nominal_shape(cfg: Config) -> tuple[int, int]:
    """(image size, classes) a preset implies without reading its data (for counts and benchmarks)."""
    return {"fmnist": (28, 10), "digits": (8, 10)}.get(cfg.data.dataset, (cfg.data.image_size or 256, 1000))


def nominal_tokenizer(cfg: Config) -> SimpleNamespace:
    """The shape attributes of a preset's tokenizer without building or training it."""
    t = cfg.tokenizer
    size, _ = nominal_shape(cfg)
    channels = 1 if cfg.data.dataset in ("fmnist", "digits") else 3
    if cfg.framework == "diffusion":
        if t.kind == "pixel":
            return SimpleNamespace(latent_shape=(channels, t.pad_to or size, t.pad_to or size))
        stages = 3 if t.kind == "diffusers_vae" else t.downsample_stages  # the SD VAE downsamples 8x
        channels = 4 if t.kind == "diffusers_vae" else t.latent_dim
        return SimpleNamespace(latent_shape=(channels, size // 2 ** stages, size // 2 ** stages))
    tokens = size * size if t.kind == "pixel" else (size // 2 ** t.downsample_stages) ** 2
    return SimpleNamespace(codebook_size=t.codebook_size, num_tokens=tokens)


def diffusion_schedule(cfg: Config, resolution: int) -> LogSNRSchedule:
    d = cfg.diffusion
    if d.schedule == "shifted_cosine" and d.shift is None:
        return LogSNRSchedule.shifted_cosine(resolution, d.shift_reference, logsnr_min=d.logsnr_min,
                                             logsnr_max=d.logsnr_max)
    shift = 0.0 if d.schedule == "cosine" else d.shift
    return LogSNRSchedule(shift, d.logsnr_min, d.logsnr_max)


def build_framework(cfg: Config, num_classes: int, tokenizer):
    if cfg.framework == "diffusion":
        return DiffusionFramework(diffusion_schedule(cfg, tokenizer.latent_shape[-1]), num_classes,
                                  cfg.diffusion.prediction, cfg.diffusion.weight_bias, cfg.train.label_dropout)
    return MaskedFramework(tokenizer.codebook_size, num_classes, cfg.train.label_dropout, cfg.train.label_smoothing)


def build_sampler(cfg: Config, tokenizer):
    s = cfg.sample
    if cfg.framework == "diffusion":
        clip = 1.0 if s.clip_denoised and cfg.tokenizer.kind == "pixel" else None
        return DiffusionSampler(diffusion_schedule(cfg, tokenizer.latent_shape[-1]), s.steps, s.cfg, s.sampler,
                                cfg.diffusion.prediction, clip)
    return MaskGITSampler(s.steps, s.cfg, s.temp_base, s.temp_anneal, s.choice_temperature)
