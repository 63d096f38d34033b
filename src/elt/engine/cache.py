"""What elt trains once and keeps under $ELT_CACHE_DIR (default ~/.cache/elt): tokenizers, metric
classifiers and encoded data sets, each keyed by its settings and the data's content, stored
atomically; a later run with the same key loads it instead of training it again."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..config import Config
from ..data import ImageData
from ..metrics.classifier import FeatureClassifier, train_classifier
from ..metrics.video import C3DClassifier, train_video_classifier
from ..tokenizers import KLVAE, VQVAE, DiffusersVAE, ScriptedTokenizer, train_klvae, train_vqvae
from ..tokenizers.maskgit_vqgan import MaskGITVQGAN
from ..tokenizers.motion import MotionVQ
from ..utils.arrays import as_tensor, batched, to_float
from . import precision
from .build import is_learned, make_tokenizer
from .distributed import resolve_device
from .store import hash_weights, load_weights, save_tensors, save_weights

log = logging.getLogger("elt")


def cache_dir() -> Path:
    return Path(os.environ.get("ELT_CACHE_DIR", Path.home() / ".cache" / "elt"))


def writable_cache() -> Path:
    """The cache folder, created and checked writable — before anything is trained to be kept there."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to the cache folder {folder} ({e.strerror}); set ELT_CACHE_DIR to a "
                         f"writable folder") from None
    return folder


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


def _cached(kind: str, settings: dict, data: ImageData, module: torch.nn.Module, fit, progress: bool):
    """Load `module` from the cache, or `fit()` it and store it there (atomically)."""
    path = cache_dir() / f"{_key(kind, settings, data)}.safetensors"
    if path.is_file():
        log.info("using cached %s %s", kind, path)
        load_weights(module, path, kind)
        return module.eval(), True
    writable_cache()
    fit()
    save_weights(module, path)
    log.info("cached %s at %s", kind, path)
    return module.eval(), False


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
    keys += ["temporal_stages"] if data.is_video and t.kind == "vqvae" else []
    keys += ["motion_tokens", "max_shift", "motion_codes"] if t.kind == "motionvq" else []
    kind, train_fn = "vqvae", train_vqvae
    if isinstance(tok, KLVAE):
        keys.remove("codebook_size")
        keys.append("kl_weight")
        kind, train_fn = "klvae", train_klvae
    settings = {k: getattr(t, k) for k in keys} | {"seed": seed, "bf16": bf16}
    if isinstance(tok, MotionVQ):
        kind, settings["arch"] = "motionvq", "first-frame+separable-shifts+motion-codebook+gn"
    elif data.is_video:
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


def get_video_classifier(cfg: Config, data: ImageData, progress: bool = True) -> C3DClassifier:
    """The 3D-conv metric classifier of clips (label + auxiliary label), trained unless cached."""
    num_aux = 0 if data.aux_labels is None else int(data.aux_labels.max()) + 1
    clf = seeded(lambda: C3DClassifier(data.images.shape[-1], data.num_classes, num_aux))
    settings = {"epochs": cfg.eval.classifier_epochs, "arch": "c3d3-128", "aux": num_aux, "labels": labels_digest(data)}
    fit = lambda: train_video_classifier(clf, data.images, data.labels, data.aux_labels,  # noqa: E731
                                         cfg.eval.classifier_epochs, progress=progress)
    return _cached("classifier3d", settings, data, clf, fit, progress)[0]


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
    elif isinstance(tokenizer, (VQVAE, MotionVQ, ScriptedTokenizer, MaskGITVQGAN)):
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
    writable_cache()
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
    save_tensors({what: codes}, path)
    return codes
