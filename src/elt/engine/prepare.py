"""A run's data, prepared once: the split, the tokenizer, the encoded examples, the class names — and the
metric classifiers that judge samples — built here and handed on, never rebuilt further down.

What elt trains or computes once (tokenizers, metric classifiers, encoded data sets) is kept under
$ELT_CACHE_DIR (default ~/.cache/elt), stored atomically and keyed by its settings and by a cheap identity
of the data (`Split.identity`: the data set, the split, its settings and its source files' digest), never
by hashing image arrays. So a later command finds a cached tokenizer or classifier without loading the
split, and a split is loaded at most once per command (`Split.data`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import data as datasets
from ..config import Config
from ..data import ImageData
from ..data.extracted import Extracted
from ..data.folder import list_image_folder
from ..metrics.classifier import FeatureClassifier, train_classifier
from ..metrics.video import C3DClassifier, train_video_classifier
from ..tokenizers import KLVAE, VQVAE, DiffusersVAE, ScriptedTokenizer, train_klvae, train_vqvae
from ..tokenizers.maskgit_vqgan import MaskGITVQGAN
from ..tokenizers.motion import MotionVQ
from ..utils.arrays import as_tensor, batched, to_float
from ..utils.atomic import write_json
from ..utils.files import check_writable
from .build import make_tokenizer
from .checkpoint import hash_weights, load_weights, save_tensors, save_weights
from .devices import DistInfo, barrier, resolve_precision

log = logging.getLogger("elt")


# ---------------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    return Path(os.environ.get("ELT_CACHE_DIR", Path.home() / ".cache" / "elt"))


def writable_cache() -> Path:
    """The cache folder, created and checked writable — before anything is trained to be kept there."""
    folder, fix = cache_dir(), "set ELT_CACHE_DIR to a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the cache folder {folder} ({e.strerror}); {fix}") from None
    return check_writable(folder, "the cache folder", fix)


def cache_key(kind: str, settings: dict, identity: str) -> str:
    blob = json.dumps({"kind": kind, "settings": settings, "data": identity}, sort_keys=True)
    return f"{kind}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def cached_module(kind: str, settings: dict, identity: str, module: torch.nn.Module, fit) -> torch.nn.Module:
    """`module` with the cached weights of (kind, settings, data identity), or `fit()` and stored there."""
    path = cache_dir() / f"{cache_key(kind, settings, identity)}.safetensors"
    if path.is_file():
        log.info("using cached %s %s", kind, path)
        load_weights(module, path, kind)
        return module.eval()
    writable_cache()
    fit()
    save_weights(module, path)
    log.info("cached %s at %s", kind, path)
    return module.eval()


def seeded(seed: int, build, *args):
    """`build(*args)` with the global RNG seeded by `seed` (and restored after): a cached network's initial
    weights depend on its seed alone, not on what the process drew before (`elt demo` trains the
    tokenizer first, `elt train` after seeding for the model; both must cache the same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args)


# ---------------------------------------------------------------------------------- splits


class Split:
    """One split of a data set: its identity at once (cheap), its examples when first asked for (loaded
    once), and its spec — example shape, class names, auxiliary label count — kept in the cache beside
    the identity, so a later command knows them without loading anything."""

    def __init__(self, dataset: str, name: str, data_dir: str | None = None, **settings):
        self.dataset, self.name, self.data_dir, self.settings = dataset, name, data_dir, settings

    @classmethod
    def of(cls, cfg: Config, name: str) -> "Split":
        d = cfg.data
        return cls(d.dataset, name, d.data_dir, image_size=d.image_size, strict_images=d.strict_images,
                   frames=d.frames, label=d.label, clips=d.clips, fold=d.fold, speed=(d.speed_min, d.speed_max),
                   start_grid=d.start_grid)

    @cached_property
    def identity(self) -> str:
        return datasets.identity(self.dataset, self.name, self.data_dir, **self.settings)

    @cached_property
    def data(self) -> ImageData:
        log.info("loading %s %s", self.dataset, self.name)
        return datasets.load_data(self.dataset, self.name, self.data_dir, **self.settings)

    @cached_property
    def spec(self) -> dict:
        path = cache_dir() / f"split-{self.identity}.json"
        if "data" not in self.__dict__:  # not loaded yet: the spec kept beside the identity, when there is one
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                pass
        d = self.data
        spec = {"example_shape": list(d.images.shape[1:]), "class_names": list(d.class_names),
                "num_aux": 0 if d.aux_labels is None else int(d.aux_labels.max()) + 1, "examples": len(d)}
        if os.access(cache_dir(), os.W_OK):
            write_json(path, spec)
        return spec

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["example_shape"])

    @property
    def class_names(self) -> list[str]:
        return list(self.spec["class_names"])

    @property
    def is_video(self) -> bool:
        return len(self.example_shape) == 4


class MiddleFrames(Split):
    """The middle frame of every clip of a video split: the images a frame classifier learns from."""

    def __init__(self, clips: Split):
        super().__init__(clips.dataset, clips.name, clips.data_dir, **clips.settings)
        self.clips = clips

    @cached_property
    def identity(self) -> str:
        return f"{self.clips.identity}-middle-frames"

    @cached_property
    def data(self) -> ImageData:
        d = self.clips.data
        return ImageData(d.images[:, d.images.shape[1] // 2], d.labels, d.class_names)


class InMemory(Split):
    """Examples already in memory (a subset read for a tokenizer), under the identity the caller gives."""

    def __init__(self, data: ImageData, identity: str):
        super().__init__("in-memory", "train")
        self.__dict__.update(data=data, identity=identity)  # the cached properties, known already


def check_splits(cfg: Config) -> None:
    """Before any work: the data a run will read later is there too (a class-folder tree's held-out split
    is listed now, not found missing after training)."""
    d = cfg.data
    if d.dataset == "folder":
        for split in ("train", "test"):
            list_image_folder(d.data_dir, split)


# ---------------------------------------------------------------------------------- tokenizers and tokens


def get_tokenizer(cfg: Config, split: Split, seed: int = 0, progress: bool = True,
                  device: torch.device | None = None):
    """The run's tokenizer, trained on `split` (the train split) unless the cache has it, on `device`
    (default the CPU); returned on the CPU."""
    tok = seeded(seed, make_tokenizer, cfg, split.example_shape)
    if not tok.learned:
        return tok
    t = cfg.tokenizer
    device = torch.device("cpu") if device is None else device
    bf16 = resolve_precision(t.precision, device) == "bf16"
    keys = ["codebook_size", "latent_dim", "hidden", "downsample_stages", "steps", "batch_size", "lr"]
    keys += ["temporal_stages"] if split.is_video and t.kind == "vqvae" else []
    keys += ["motion_tokens", "max_shift", "motion_codes"] if t.kind == "motionvq" else []
    keys += ["sprite_size"] if t.kind == "motionvq" and t.sprite_size else []
    kind, train_fn = "vqvae", train_vqvae
    if isinstance(tok, KLVAE):
        keys.remove("codebook_size")
        keys.append("kl_weight")
        kind, train_fn = "klvae", train_klvae
    settings = {k: getattr(t, k) for k in keys} | {"seed": seed, "bf16": bf16}
    if isinstance(tok, MotionVQ):
        kind, settings["arch"] = "motionvq", "first-frame+separable-shifts+motion-codebook+gn" + (
            "+sprite-coordconv" if t.sprite_size else "")
    elif split.is_video:
        settings["arch"] = "gn-errrestart-timefirst"  # the 3D VQ's layers and restarts (older caches are stale)
    if device.type != "cpu":
        log.info("training the tokenizer on %s", device)
    fit = lambda: train_fn(tok, split.data.images, t.steps, t.batch_size, t.lr, seed, progress, bf16, device)  # noqa: E731
    return cached_module(kind, settings, split.identity, tok, fit)


@torch.no_grad()
def encode(tokenizer, split: Split, bf16: bool = False, progress: bool = False,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """Token ids (masked) or latents (diffusion) of every example of `split`, converted to float a chunk at
    a time. A learned or pretrained codec's output is computed once and cached, keyed by its weights and
    the split's identity. `bf16`: the codec's convolutions under bf16 autocast. `device`: where a learned
    or pretrained codec encodes (the codec goes back to the CPU; the result is on the CPU)."""
    video = split.is_video
    chunk = 64 if video else 256
    if isinstance(tokenizer, (KLVAE, DiffusersVAE)):
        shape, what = tuple(tokenizer.latent_shape), "latents"
    elif isinstance(tokenizer, (VQVAE, MotionVQ, ScriptedTokenizer, MaskGITVQGAN)):
        shape, what = (tokenizer.num_tokens,), "tokens"
    else:  # a fixed tokenizer: cheap, never cached
        return batched(lambda x: tokenizer.encode(to_float(x)), as_tensor(split.data.images), 1024)
    h = hash_weights(tokenizer, hashlib.sha1(f"{split.identity} {what} bf16={bf16}".encode()))
    path = cache_dir() / f"{what}-{h.hexdigest()[:16]}.safetensors"
    if path.is_file():
        try:
            codes = load_file(str(path))[what]
            if codes.shape == (split.spec["examples"], *shape):
                log.info("using cached %s %s", what, path)
                return codes
        except Exception:  # a damaged cache entry is recomputed
            pass
    writable_cache()
    images = as_tensor(split.data.images)
    device = torch.device(device)
    log.info("encoding %d %s to %s %s on %s", len(images), "clips" if video else "images", what, shape, device)
    step = lambda x: tokenizer.encode(to_float(x.to(device))).cpu()  # noqa: E731
    try:
        tokenizer.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            codes = batched(step, images, chunk, progress=progress, desc=f"encode {what}")
    finally:
        tokenizer.to("cpu")
    codes = codes.float() if what == "latents" else codes.long()
    save_tensors({what: codes}, path)
    return codes


def manifest_settings(cfg: Config) -> dict:
    """What must match between an extraction (`elt extract`) and the training that reads it."""
    return {"framework": cfg.framework, "tokenizer": dataclasses.asdict(cfg.tokenizer),
            "image_size": cfg.data.image_size, "frames": cfg.data.frames}


def tokenizer_hash(tokenizer) -> str:
    """A short digest of a tokenizer's weights: an extraction records the one it used."""
    return hash_weights(tokenizer).hexdigest()[:16]


def extracted_tokenizer(cfg: Config, extracted: Extracted):
    """The config's tokenizer for an extraction's shards, with the extraction's weights when elt trained
    it; one clear error when the config or the weights are not the extraction's."""
    extracted.check(manifest_settings(cfg))
    tok = make_tokenizer(cfg, tuple(extracted.meta["example_shape"]))
    if tok.learned:
        load_weights(tok, extracted.folder / "tokenizer.safetensors", "tokenizer", "run `elt extract` again")
    if tokenizer_hash(tok) != extracted.meta["tokenizer_hash"]:
        raise ValueError(f"the tokenizer this config loads is not the one {extracted.folder} was extracted with "
                         f"(its weights differ); use the same tokenizer file, or extract again")
    return tok.eval()


# ---------------------------------------------------------------------------------- a run's data


@dataclass
class Prepared:
    """What training needs of its data, built once by `prepare` and handed on."""
    split: Split | None              # the train split (None: an `elt extract` folder)
    tokenizer: torch.nn.Module       # on the CPU, eval mode
    examples: object                 # token ids or latents: a tensor, or the extraction's memory-mapped shards
    labels: torch.Tensor
    class_names: list[str]
    example_shape: tuple[int, ...]   # one image (H, W, C) or clip (T, H, W, C), as the tokenizer takes it
    source: str                      # for the log: where the examples come from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prepare(cfg: Config, info: DistInfo | None = None, progress: bool = True, split: Split | None = None) -> Prepared:
    """The train split, the tokenizer (trained once, cached), the encoded examples (cached) and the class
    names. Under torchrun rank 0 trains and encodes first; the other ranks then read the cache. `split`:
    the train split when the caller holds it already (loaded at most once)."""
    info = info or DistInfo()
    if cfg.data.dataset == "extracted":  # pre-encoded by `elt extract`: memory-mapped shards
        ext = Extracted(cfg.data.data_dir)
        return Prepared(None, extracted_tokenizer(cfg, ext), ext, ext.labels, ext.classes,
                        tuple(ext.meta["example_shape"]), f"{ext.folder}, {len(ext)} examples {tuple(ext.shape[1:])}")
    split = split or Split.of(cfg, "train")
    bf16 = split.is_video and resolve_precision(cfg.tokenizer.precision, info.device) == "bf16"

    def tokenize(show: bool):  # token ids (masked) or latents (diffusion), encoded on the run's device
        tok = get_tokenizer(cfg, split, seed=cfg.train.seed, progress=show, device=info.device)
        return tok, encode(tok, split, bf16, show, info.device)

    if info.is_main:
        tokenizer, examples = tokenize(progress)
    barrier(info)
    if not info.is_main:
        tokenizer, examples = tokenize(False)
    data = split.data
    return Prepared(split, tokenizer, examples, torch.as_tensor(data.labels), list(data.class_names),
                    tuple(data.images.shape[1:]), f"{cfg.data.dataset} train, {len(data)} examples "
                    f"{tuple(data.images.shape[1:])}")


# ---------------------------------------------------------------------------------- metric classifiers

# Moving Fashion-MNIST's frames are judged by the Fashion-MNIST classifier on the garment crop.
GARMENT_CROP = 28


@dataclass
class Classifiers:
    """The networks that judge a run's samples: the image classifier (images), or the 3D classifier of
    clips and the image classifier of their frames (video: `frames`, with the data set it names,
    its crop and whether the clips' labels are its classes)."""
    main: torch.nn.Module
    frames: torch.nn.Module | None = None
    frame_set: str | None = None
    crop: int | None = None
    same_labels: bool = True


def frame_split(cfg: Config, clips: Split) -> tuple[str, Split, int | None]:
    """The image classifier's data for a video data set's frames: (its name, its train split, the crop).
    Moving Fashion-MNIST: Fashion-MNIST's (the image demo's classifier) on the garment crop; other
    videos: the middle frames of the training clips."""
    if cfg.data.dataset == "mfmnist":  # the frames show garments whatever the clips' label
        return "fmnist", Split("fmnist", "train", cfg.data.data_dir), GARMENT_CROP
    return cfg.data.dataset, MiddleFrames(clips), None


def metric_classifiers(cfg: Config, train: Split | None = None, progress: bool = True) -> Classifiers:
    """The metric classifier(s), trained on the train split unless cached (found by the split's identity:
    a cached one needs no data). They train on the CPU whatever the run's device (a minute at these sizes),
    so a GPU run is judged by the network a laptop trains from the same seed."""
    train = train or Split.of(cfg, "train")
    epochs = cfg.eval.classifier_epochs
    if not train.is_video:
        return Classifiers(_image_classifier(train, epochs, progress))
    num_aux, names = train.spec["num_aux"], train.class_names
    clf = seeded(0, C3DClassifier, train.example_shape[-1], len(names), num_aux)
    settings = {"epochs": epochs, "arch": "c3d3-128", "aux": num_aux}
    fit = lambda: train_video_classifier(clf, train.data.images, train.data.labels, train.data.aux_labels,  # noqa: E731
                                         epochs, progress=progress)
    main = cached_module("classifier3d", settings, train.identity, clf, fit)
    frame_set, frames, crop = frame_split(cfg, train)
    same = cfg.data.label == "class" or cfg.data.dataset != "mfmnist"
    return Classifiers(main, _image_classifier(frames, epochs, progress), frame_set, crop, same)


def _image_classifier(split: Split, epochs: float, progress: bool) -> FeatureClassifier:
    shape = split.example_shape
    clf = seeded(0, FeatureClassifier, shape[0], shape[2], len(split.class_names))
    fit = lambda: train_classifier(clf, split.data.images, split.data.labels, epochs, progress=progress)  # noqa: E731
    return cached_module("classifier", {"epochs": epochs, "arch": "cnn2-128"}, split.identity, clf, fit)
