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

from ..atomic import atomic_path, write_text
from ..config import Config
from ..data import VIDEO_DATASETS, ImageData, load_data
from ..diffusion import DiffusionFramework, DiffusionSampler, DiT, LogSNRSchedule
from ..masked import MaskedFramework, MaskedTransformer, MaskGITSampler
from ..metrics.classifier import FeatureClassifier, train_classifier
from ..metrics.video import C3DClassifier, train_video_classifier
from ..tokenizers import (KLVAE, VQVAE, DiffusersVAE, PixelSpace, PixelTokenizer, ScriptedTokenizer, train_klvae,
                          train_vqvae)
from ..tokenizers.vqvae import as_tensor, batched, to_float
from ..tokenizers.maskgit_vqgan import MaskGITVQGAN
from . import precision
from .distributed import resolve_device

log = logging.getLogger("elt")


def cache_dir() -> Path:
    return Path(os.environ.get("ELT_CACHE_DIR", Path.home() / ".cache" / "elt"))


def data_fingerprint(data: ImageData) -> str:
    if data.fingerprint is not None:
        return data.fingerprint
    h = hashlib.sha1()
    h.update(str(data.images.shape).encode())
    h.update(np.ascontiguousarray(data.images).tobytes())
    h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()[:16]


def labels_digest(data: ImageData) -> str:
    """The labels (and auxiliary labels) a classifier learns: a data fingerprint may name the images
    alone (moving Fashion-MNIST labelled by class or by motion has one)."""
    h = hashlib.sha1(np.ascontiguousarray(data.labels, dtype=np.int64).tobytes())
    if data.aux_labels is not None:
        h.update(b"aux" + np.ascontiguousarray(data.aux_labels, dtype=np.int64).tobytes())
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
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def save_arrays(path: Path, array: np.ndarray | None = None, **arrays) -> None:
    """One array as .npy, or named arrays as .npz, written to a temporary file and renamed."""
    with atomic_path(path) as tmp:
        np.save(tmp, array) if array is not None else np.savez(tmp, **arrays)


def hash_weights(module: torch.nn.Module, h=None):
    """`h` (a new SHA-1 when None) updated with every tensor of the module's state, by name."""
    h = hashlib.sha1() if h is None else h
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h


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
    size, channels = data.images.shape[-3], data.images.shape[-1]
    if t.kind == "torchscript":
        return ScriptedTokenizer(t.path, t.sha256)
    if t.kind == "maskgit_vqgan":
        return MaskGITVQGAN.from_file(t.path, t.sha256, size)
    if data.is_video:
        return VQVAE(size, channels, t.codebook_size, t.latent_dim, t.hidden, t.downsample_stages,
                     frames=data.images.shape[1], temporal_stages=t.temporal_stages)
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


def seeded(build, seed: int = 0):
    """`build()` with the global RNG seeded by `seed` (and restored after): a cached network's initial
    weights depend on its seed alone, not on what the process drew before (`elt demo` trains the
    tokenizer first, `elt train` after seeding for the model; both must cache the same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def get_tokenizer(cfg: Config, data: ImageData, seed: int = 0, progress: bool = True,
                  device: torch.device | None = None):
    """The run's tokenizer, trained on `data` (train split) unless the cache has it, on `device`
    (default: the run's `train.device`); returned on the CPU."""
    tok = seeded(lambda: make_tokenizer(cfg, data), seed)
    if not is_learned(tok):
        return tok
    t = cfg.tokenizer
    device = resolve_device(cfg.train.device) if device is None else device
    bf16 = precision.resolve(t.precision, device) == "bf16"
    keys = ["codebook_size", "latent_dim", "hidden", "downsample_stages", "steps", "batch_size", "lr"]
    keys += ["temporal_stages"] if data.is_video else []
    kind, train_fn = "vqvae", train_vqvae
    if isinstance(tok, KLVAE):
        keys.remove("codebook_size")
        keys.append("kl_weight")
        kind, train_fn = "klvae", train_klvae
    settings = {k: getattr(t, k) for k in keys} | {"seed": seed, "bf16": bf16}
    if data.is_video:
        settings["arch"] = "gn-errrestart-timefirst"  # the 3D VQ's layers and restarts (older caches are stale)
    if device.type != "cpu":
        log.info("training the tokenizer on %s", device)
    fit = lambda: train_fn(tok, data.images, t.steps, t.batch_size, t.lr, seed, progress, bf16, device)  # noqa: E731
    return _cached(kind, settings, data, tok, fit, progress)[0]


def get_classifier(cfg: Config, data: ImageData, progress: bool = True) -> FeatureClassifier:
    """The metric classifier, trained on the train split unless cached. Metric classifiers train on the
    CPU whatever the run's device (a minute at these sizes), so a GPU run is judged by the network a
    laptop trains from the same seed, not by one whose GPU kernels made it drift."""
    clf = seeded(lambda: FeatureClassifier(data.images.shape[1], data.images.shape[3], data.num_classes))
    settings = {"epochs": cfg.eval.classifier_epochs, "arch": "cnn2-128"}
    fit = lambda: train_classifier(clf, data.images, data.labels, cfg.eval.classifier_epochs, progress=progress)  # noqa: E731
    return _cached("classifier", settings, data, clf, fit, progress)[0]


# Moving Fashion-MNIST's frames are judged by the Fashion-MNIST classifier on the garment crop.
GARMENT_CROP = 28


def frame_judge_data(cfg: Config, data: ImageData) -> tuple[str, ImageData, int | None]:
    """The image classifier for a video data set's frames: (its data set name, its training images,
    the crop size). Moving Fashion-MNIST: the Fashion-MNIST classifier (the image demo's) on the
    garment crop; other videos: a classifier of the middle frames of the training clips."""
    if cfg.data.dataset == "mfmnist":  # the frames show garments whatever the clips' label
        return "fmnist", load_data("fmnist", "train", cfg.data.data_dir), GARMENT_CROP
    mid = data.images[:, data.images.shape[1] // 2]
    return cfg.data.dataset, ImageData(mid, data.labels, data.class_names), None


def get_video_classifier(cfg: Config, data: ImageData, progress: bool = True) -> C3DClassifier:
    """The 3D-conv metric classifier of clips (label + auxiliary label), trained unless cached."""
    num_aux = 0 if data.aux_labels is None else int(data.aux_labels.max()) + 1
    clf = seeded(lambda: C3DClassifier(data.images.shape[-1], data.num_classes, num_aux))
    settings = {"epochs": cfg.eval.classifier_epochs, "arch": "c3d3-128", "aux": num_aux, "labels": labels_digest(data)}
    fit = lambda: train_video_classifier(clf, data.images, data.labels, data.aux_labels,  # noqa: E731
                                         cfg.eval.classifier_epochs, progress=progress)
    return _cached("classifier3d", settings, data, clf, fit, progress)[0]


def metric_prefix(cfg: Config) -> str:
    """The metric extractor's name: data set + network (`fmnist_cnn`, `mfmnist_c3d`)."""
    return f"{cfg.data.dataset}_{'c3d' if cfg.data.dataset in VIDEO_DATASETS else 'cnn'}"


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
        raise ValueError(f"{path} is damaged ({e}); delete it and elt reads the shapes and class names from the "
                         f"run's data again") from None
    return ImageData(np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64), names)


def load_split(cfg: Config, split: str) -> ImageData:
    d = cfg.data
    if d.dataset == "extracted":  # pre-encoded shards: labels and class names only
        from .extract import Extracted
        return Extracted(d.data_dir).as_data()
    return load_data(d.dataset, split, d.data_dir, d.image_size, d.strict_images, d.frames, d.label, d.clips, d.fold)


@torch.no_grad()
def encode_dataset(tokenizer, data: ImageData, bf16: bool = False, progress: bool = False,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Token ids (masked) or latents (diffusion) of every image or clip, converted to float a chunk at
    a time. A learned or pretrained codec's output is computed once and cached, keyed by its weights
    and the data. `bf16`: the codec's convolutions under bf16 autocast. `device`: where a learned or
    pretrained codec encodes (a chunk at a time; the codec goes back to the CPU and the result is on
    the CPU)."""
    images = as_tensor(data.images)
    chunk = 64 if data.is_video else 256
    if isinstance(tokenizer, (KLVAE, DiffusersVAE)):
        shape, what = tuple(tokenizer.latent_shape), "latents"
    elif isinstance(tokenizer, (VQVAE, ScriptedTokenizer, MaskGITVQGAN)):
        shape, what = (tokenizer.num_tokens,), "tokens"
    else:  # a fixed tokenizer: cheap, never cached
        return batched(lambda x: tokenizer.encode(to_float(x)), images, 1024)
    h = hash_weights(tokenizer, hashlib.sha1(f"{data_fingerprint(data)} {what} bf16={bf16}".encode()
                                             if bf16 or data.is_video else data_fingerprint(data).encode()))
    path = cache_dir() / f"{what}-{h.hexdigest()[:16]}.safetensors"
    if path.is_file():
        try:
            codes = load_file(str(path))[what]
            if codes.shape == (len(images), *shape):
                log.info("using cached %s %s", what, path)
                return codes
        except Exception:  # a damaged cache entry is recomputed
            pass
    device = torch.device(device)
    log.info("encoding %d %s to %s %s on %s", len(images), "clips" if data.is_video else "images", what, shape,
             device)
    encode = lambda x: tokenizer.encode(to_float(x.to(device))).cpu()  # noqa: E731
    try:
        tokenizer.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            codes = batched(encode, images, chunk, progress=progress, desc=f"encode {what}")
    finally:
        tokenizer.to("cpu")
    codes = codes.float() if what == "latents" else codes.long()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({what: codes}, path)
    return codes


def build_model(cfg: Config, tokenizer, num_classes: int) -> torch.nn.Module:
    """The framework's network for a tokenizer (or any object with its shape attributes:
    `codebook_size` and `num_tokens` for masked, `latent_shape` for diffusion)."""
    m = cfg.model
    if cfg.framework == "diffusion":
        c, h, w = tokenizer.latent_shape
        return DiT(h, c, num_classes, m.patch_size, m.width, m.heads, m.unique_layers, m.mlp_ratio)
    return MaskedTransformer(tokenizer.codebook_size, tokenizer.num_tokens, num_classes, m.width, m.heads,
                             m.unique_layers, m.mlp_ratio, m.dropout, getattr(tokenizer, "grid", None))


def nominal_shape(cfg: Config) -> tuple[int, int]:
    """(image size, classes) a preset implies without reading its data (for counts and benchmarks)."""
    known = {"fmnist": (cfg.data.image_size or 28, 10), "digits": (8, 10), "mfmnist": (cfg.data.image_size or 64, 10),
             "ucf101": (cfg.data.image_size or 128, 101)}
    return known.get(cfg.data.dataset, (cfg.data.image_size or 256, 1000))


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
    if cfg.data.dataset in VIDEO_DATASETS:
        side = size // 2 ** t.downsample_stages
        grid = (cfg.data.frames // 2 ** t.temporal_stages, side, side)
        return SimpleNamespace(codebook_size=t.codebook_size, num_tokens=grid[0] * side * side, grid=grid)
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
