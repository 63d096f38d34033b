"""A run's pieces from its config, nothing trained, cached or read from disk: the tokenizer (or codec), the
network, the framework (the training objective's corruption and losses), the ILSD objective, the noise
schedule and the sampler — and the same network on the meta device, sized from the preset alone, to
count parameters and FLOPs without allocating anything."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from ..choices import VIDEO_DATASETS
from ..config import Config, SampleConfig
from ..core.ilsd import ILSD, ILSDOptions
from ..diffusion import DiffusionFramework, DiffusionSampler, DiT, LogSNRSchedule
from ..masked import MaskedFramework, MaskedTransformer, MaskGITSampler
from ..presets import get_preset
from ..tokenizers import KLVAE, VQVAE, DiffusersVAE, PixelSpace, PixelTokenizer, ScriptedTokenizer
from ..tokenizers.maskgit_vqgan import MaskGITVQGAN
from ..tokenizers.motion import MotionVQ


def make_tokenizer(cfg: Config, example_shape: tuple[int, ...]):
    """The run's tokenizer (masked) or codec (diffusion), untrained, for examples of `example_shape`:
    (H, W, C) images or (T, H, W, C) clips."""
    t = cfg.tokenizer
    size, channels, video = example_shape[-3], example_shape[-1], len(example_shape) == 4
    if t.kind == "torchscript":
        return ScriptedTokenizer(t.path, t.sha256)
    if t.kind == "maskgit_vqgan":
        return MaskGITVQGAN.from_file(t.path, t.sha256, size)
    if t.kind == "motionvq":
        return MotionVQ(size, channels, example_shape[0], t.codebook_size, t.latent_dim, t.hidden,
                        t.downsample_stages, t.motion_tokens, t.max_shift, t.motion_codes, sprite_size=t.sprite_size)
    if video:
        return VQVAE(size, channels, t.codebook_size, t.latent_dim, t.hidden, t.downsample_stages,
                     frames=example_shape[0], temporal_stages=t.temporal_stages)
    if cfg.framework == "diffusion":
        if t.kind == "pixel":
            return PixelSpace(size, channels, t.pad_to)
        if t.kind == "diffusers_vae":
            return DiffusersVAE(t.path, size, channels)
        return KLVAE(size, channels, t.latent_dim, t.hidden, t.downsample_stages, t.kl_weight)
    if t.kind == "pixel":
        return PixelTokenizer(size, channels, levels=t.codebook_size)
    return VQVAE(size, channels, t.codebook_size, t.latent_dim, t.hidden, t.downsample_stages)


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
        side = (t.sprite_size or size) // 2 ** t.downsample_stages
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
                           cfg.ilsd.temperature, position_weights=_motion_weights(cfg, tokenizer))


def _motion_weights(cfg: Config, tokenizer) -> torch.Tensor | None:
    """The masked losses' position weights: a motionvq clip's motion tokens (its last ones) at
    train.motion_loss_weight, every other token 1; None (the plain mean) at weight 1."""
    w = cfg.train.motion_loss_weight
    if w == 1:
        return None
    weights = torch.ones(tokenizer.num_tokens)
    weights[-cfg.tokenizer.motion_tokens:] = w
    return weights


def build_objective(cfg: Config, objective: str | None = None) -> ILSD:
    """The training objective of `cfg` (ILSD with its switches, or vanilla looping)."""
    m, t = cfg.model, cfg.train
    costs = None
    if cfg.ilsd.lint_distribution == "flops":  # the network's forward FLOPs at every L, counted on the meta device
        net = nominal_model(cfg)
        costs = tuple(float(net.flops(L)) for L in range(1, m.max_loops + 1))
    return ILSD(m.min_loops, m.max_loops, t.steps, objective or t.objective,
                ILSDOptions(**dataclasses.asdict(cfg.ilsd)), costs)


def build_sampler(cfg: Config, tokenizer, sample: SampleConfig | None = None):
    """The sampler of `sample`'s settings (default: the config's own `sample` section)."""
    s = cfg.sample if sample is None else sample
    if cfg.framework == "diffusion":
        clip = 1.0 if s.clip_denoised and cfg.tokenizer.kind == "pixel" else None
        return DiffusionSampler(diffusion_schedule(cfg, tokenizer.latent_shape[-1]), s.steps, s.guidance, s.sampler,
                                cfg.diffusion.prediction, clip, guidance_loops=s.guidance_loops)
    motion = cfg.tokenizer.kind == "motionvq"  # its motion tokens come last, with ids of their own
    return MaskGITSampler(s.steps, s.guidance, s.temp_base, s.temp_anneal, s.choice_temperature, s.guidance_loops,
                          trailing=cfg.tokenizer.motion_tokens if motion else 0, trailing_order=s.motion_order,
                          trailing_vocab=cfg.tokenizer.motion_codes if motion else 0,
                          trailing_temperature=s.motion_temperature if motion else None)


def nominal_model(cfg: Config) -> torch.nn.Module:
    """The preset's network on the meta device, sized without reading its data: nothing is allocated, so
    paper-scale models are counted at once."""
    _, classes = nominal_shape(cfg)
    with torch.device("meta"):
        return build_model(cfg, nominal_tokenizer(cfg), classes)


def preset_summary(name: str) -> dict:
    """A preset's N, Lmax, width, tokens, exact parameter count and forward GFLOPs at Lmax."""
    cfg = get_preset(name)
    model, m = nominal_model(cfg), cfg.model
    return {"unique_layers": m.unique_layers, "max_loops": m.max_loops, "width": m.width, "tokens": model.num_tokens,
            "params": sum(p.numel() for p in model.parameters()), "gflops_at_lmax": model.flops(m.max_loops) / 1e9}
