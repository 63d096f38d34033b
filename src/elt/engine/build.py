"""A run's pieces from its config, nothing trained and nothing cached: the data splits, the tokenizer
(or codec), the network, the framework (training objective's corruption and losses) and the sampler;
and the shapes a preset implies without reading its data (for counts and benchmarks)."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from ..choices import VIDEO_DATASETS
from ..config import Config
from ..core.ilsd import ILSD, ILSDOptions
from ..data import ImageData, load_data
from ..data.extracted import Extracted
from ..data.folder import list_image_folder
from ..diffusion import DiffusionFramework, DiffusionSampler, DiT, LogSNRSchedule
from ..masked import MaskedFramework, MaskedTransformer, MaskGITSampler
from ..presets import get_preset
from ..tokenizers import KLVAE, VQVAE, DiffusersVAE, PixelSpace, PixelTokenizer, ScriptedTokenizer
from ..tokenizers.maskgit_vqgan import MaskGITVQGAN
from ..tokenizers.motion import MotionVQ
from .store import hash_weights, load_weights


def load_split(cfg: Config, split: str) -> ImageData:
    """The config's data set split ("train" or "test"); an extraction gives labels and class names only."""
    d = cfg.data
    if d.dataset == "extracted":
        return Extracted(d.data_dir).as_data()
    return load_data(d.dataset, split, d.data_dir, d.image_size, d.strict_images, d.frames, d.label, d.clips, d.fold,
                     (d.speed_min, d.speed_max), d.start_grid)


def make_tokenizer(cfg: Config, data: ImageData):
    """The run's tokenizer (masked) or codec (diffusion), untrained."""
    t = cfg.tokenizer
    size, channels = data.images.shape[-3], data.images.shape[-1]
    if t.kind == "torchscript":
        return ScriptedTokenizer(t.path, t.sha256)
    if t.kind == "maskgit_vqgan":
        return MaskGITVQGAN.from_file(t.path, t.sha256, size)
    if t.kind == "motionvq":
        return MotionVQ(size, channels, data.images.shape[1], t.codebook_size, t.latent_dim, t.hidden,
                        t.downsample_stages, t.motion_tokens, t.max_shift, t.motion_codes)
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
    return isinstance(tokenizer, (VQVAE, MotionVQ, KLVAE))


def build_model(cfg: Config, tokenizer, num_classes: int) -> torch.nn.Module:
    """The framework's network for a tokenizer (or any object with its shape attributes:
    `codebook_size` and `num_tokens` for masked, `latent_shape` for diffusion)."""
    m = cfg.model
    if cfg.framework == "diffusion":
        c, h, w = tokenizer.latent_shape
        return DiT(h, c, num_classes, m.patch_size, m.width, m.heads, m.unique_layers, m.mlp_ratio)
    return MaskedTransformer(tokenizer.codebook_size, tokenizer.num_tokens, num_classes, m.width, m.heads,
                             m.unique_layers, m.mlp_ratio, m.dropout, getattr(tokenizer, "grid", None), m.arch)


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
    if t.kind == "motionvq":
        side = size // 2 ** t.downsample_stages
        return SimpleNamespace(codebook_size=t.codebook_size + t.motion_codes, num_tokens=side * side + t.motion_tokens)
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
    return MaskedFramework(tokenizer.codebook_size, num_classes, cfg.train.label_dropout, cfg.train.label_smoothing,
                           cfg.ilsd.temperature)


def build_objective(cfg: Config, objective: str | None = None) -> ILSD:
    """The training objective of `cfg` (ILSD with its switches, or vanilla looping)."""
    m, t = cfg.model, cfg.train
    return ILSD(m.min_loops, m.max_loops, t.steps, objective or t.objective,
                ILSDOptions(**dataclasses.asdict(cfg.ilsd)))


def build_sampler(cfg: Config, tokenizer):
    s = cfg.sample
    if cfg.framework == "diffusion":
        clip = 1.0 if s.clip_denoised and cfg.tokenizer.kind == "pixel" else None
        return DiffusionSampler(diffusion_schedule(cfg, tokenizer.latent_shape[-1]), s.steps, s.guidance, s.sampler,
                                cfg.diffusion.prediction, clip)
    return MaskGITSampler(s.steps, s.guidance, s.temp_base, s.temp_anneal, s.choice_temperature)


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
    tok = make_tokenizer(cfg, extracted.as_data())
    if is_learned(tok):
        load_weights(tok, extracted.folder / "tokenizer.safetensors", "tokenizer", "run `elt extract` again")
    if tokenizer_hash(tok) != extracted.meta["tokenizer_hash"]:
        raise ValueError(f"the tokenizer this config loads is not the one {extracted.folder} was extracted with "
                         f"(its weights differ); use the same tokenizer file, or extract again")
    return tok.eval()


def preset_summary(name: str) -> dict:
    """A preset's N, Lmax, width, tokens, exact parameter count and forward GFLOPs at Lmax, counted on
    the meta device (no memory is allocated, so the paper-scale models list at once)."""
    cfg = get_preset(name)
    _, classes = nominal_shape(cfg)
    with torch.device("meta"):
        model = build_model(cfg, nominal_tokenizer(cfg), classes)
    m = cfg.model
    return {"unique_layers": m.unique_layers, "max_loops": m.max_loops, "width": m.width, "tokens": model.num_tokens,
            "params": sum(p.numel() for p in model.parameters()), "gflops_at_lmax": model.flops(m.max_loops) / 1e9}


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` (the GPU's memory, or the machine's MemAvailable); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(cfg: Config, device: torch.device) -> None:
    """Before any work: one clear error when the network is too large to train here. Counted on the meta
    device (nothing allocated); training holds about 20 bytes a parameter (fp32 weights, gradients, EMA and
    AdamW's two moments)."""
    _, classes = nominal_shape(cfg)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(cfg, nominal_tokenizer(cfg), classes).parameters())
    need, free = 20 * params, available_memory(device)
    if free is not None and need > free:
        m = cfg.model
        raise ValueError(f"model.width={m.width} with {m.unique_layers} unique layers is {params / 1e6:,.0f}M "
                         f"parameters, about {need / 2**30:,.1f} GiB to train; {device.type} has "
                         f"{free / 2**30:,.1f} GiB free: lower model.width or model.unique_layers")


def check_splits(cfg: Config) -> None:
    """Before any work: the data a run will read later is there too (a class-folder tree's held-out split
    is listed now, not found missing after training)."""
    d = cfg.data
    if d.dataset == "folder":
        for split in ("train", "test"):
            list_image_folder(d.data_dir, split)
