"""Named configurations. Every name carries N (unique layers) and L (max loops): `...-2Nx4L`.

CPU demos (Fashion-MNIST, digits, moving Fashion-MNIST video) and the paper's ImageNet-256 and
UCF-101 models (the three settings of the paper, its model scales and its result tables).
The paper tokenises ImageNet with the pretrained MaskGIT VQGAN (16×16 tokens, codebook 1024): the
ImageNet presets read a local port of it (`tokenizer.kind=maskgit_vqgan`, docs/reproduce.md).
Short aliases (`fmnist-maskgit`, `digits-maskgit`) name the demo presets.
"""
from __future__ import annotations

import copy

from pathlib import Path

from .config import (Config, ConfigError, DataConfig, DiffusionConfig, EvalConfig, ModelConfig, SampleConfig,
                     TokenizerConfig, TrainConfig, read_config, suggest)


def _fmnist_maskgit() -> Config:
    return Config(
        name="fmnist-maskgit-2Nx4L",
        model=ModelConfig(width=128, heads=4, unique_layers=2, max_loops=4, min_loops=1),
        data=DataConfig(dataset="fmnist"),
        # The VQ-VAE's convolutions train under bf16 autocast where the CPU has bf16 (~1.5x faster).
        # More VQ steps lower the reconstruction floor (2000 steps: fd_fmnist_cnn 11 vs 17) but did not
        # lower the samples' FD within this budget, so the time goes to the transformer instead.
        tokenizer=TokenizerConfig(kind="vqvae", codebook_size=512, latent_dim=16, hidden=64,
                                  downsample_stages=2, steps=1200),
        # 2000 steps of batch 32 (~1.1 epochs), the block compiled once: the 10-minute demo budget.
        # At equal compute, batch 32 beat batch 64 (fd_fmnist_cnn ~40 vs ~48, acc 0.93 vs 0.88).
        train=TrainConfig(steps=2000, batch_size=32, lr=1.5e-3, warmup_steps=100, ema_decay=0.995,
                          compile=True),
        # 8 decoding steps decode 49 tokens as well as 12 did (acc/FD within run-to-run noise), and
        # batches of 32 keep activations in cache: ~25% faster per sample than batches of 250.
        sample=SampleConfig(steps=8, guidance=2.0, batch_size=32),
        eval=EvalConfig(n=500),
    )


def _fmnist_maskgit_1x8() -> Config:
    """The masked demo (`fmnist-maskgit`): the 2N×4L model's compute as ONE layer looped 8 times, in
    MaskGIT's BERT layout (the paper's). Same FLOPs per sample at Lmax. Pre-norm, the same run stayed
    flat (fd 44–48 at every L = 1 … 16); BERT's post-norm layers improve with every loop (fd 50 at L = 1,
    32 at L = 8, 28 at L = 16; accuracy 0.90–0.95), the paper's quality-for-compute curve. Vanilla looping
    collapses off Lmax as in the paper (BERT: fd 218 at L = 1 vs 29.5 at L = 8; pre-norm: 203 vs 44)."""
    cfg = _fmnist_maskgit()
    cfg.name = "fmnist-maskgit-1Nx8L"
    cfg.model.unique_layers, cfg.model.max_loops = 1, 8
    cfg.model.arch = "bert"
    return cfg


def _fmnist_maskgit_w256() -> Config:
    """The demo's model at width 256 (4x the FLOPs per token): a longer CPU run, and the benchmark's
    width-256 point."""
    cfg = _fmnist_maskgit()
    cfg.name = "fmnist-maskgit-w256-2Nx4L"
    cfg.model.width, cfg.model.heads = 256, 4
    cfg.train.batch_size, cfg.train.steps, cfg.train.lr = 64, 4000, 1e-3
    return cfg


def _digits_maskgit() -> Config:
    return Config(
        name="digits-maskgit-2Nx4L",
        model=ModelConfig(width=64, heads=4, unique_layers=2, max_loops=4, min_loops=1),
        data=DataConfig(dataset="digits"),
        tokenizer=TokenizerConfig(kind="pixel", codebook_size=17),
        # EMA 0.98 (a 50-step average): the default 0.999 averages over ~1000 steps, so after 300 the EMA
        # weights were mostly the first steps' and sampled noise (accuracy 0.10-0.14 against the raw
        # weights' 0.95); with 0.98, 0.88 / 0.92 / 0.96 at L = 1 / 2 / 4.
        train=TrainConfig(steps=300, batch_size=64, lr=2e-3, warmup_steps=30, ema_decay=0.98, ckpt_every=100),
        sample=SampleConfig(steps=8, guidance=2.0, batch_size=200),
        eval=EvalConfig(n=200, classifier_epochs=30.0),
    )


# The paper's model scales (B, L, XL, H): width, heads; MLP ratio 4.
_SCALES = {"B": (768, 12), "L": (1024, 16), "XL": (1152, 16), "H": (1280, 16)}


def _imagenet_maskgit(scale: str, n: int, loops: int):
    def make() -> Config:
        width, heads = _SCALES[scale]
        return Config(
            name=f"maskgit-{scale}-{n}Nx{loops}L",
            model=ModelConfig(width=width, heads=heads, unique_layers=n, max_loops=loops,
                              min_loops=1, dropout=0.1, arch="bert"),
            data=DataConfig(dataset="folder", image_size=256),
            # MaskGIT's pretrained VQGAN (16×16 tokens, 1024 codes) from a local file: see docs/reproduce.md.
            tokenizer=TokenizerConfig(kind="maskgit_vqgan", path="weights/maskgit-vqgan-imagenet-f16-256.safetensors",
                                      codebook_size=1024, downsample_stages=4),
            train=TrainConfig(steps=675_000, batch_size=512, lr=1e-4, warmup_steps=5000,
                              weight_decay=0.045 * (5 if scale == "H" else 1), ema_decay=0.9999,
                              ckpt_every=10_000, log_every=100),
            sample=SampleConfig(steps=24, guidance=1.0, batch_size=64),
            eval=EvalConfig(n=50_000),
        )
    return make


def _fmnist64_maskgit_b() -> Config:
    """The reduced GPU recipe of docs/reproduce.md: ELT-B (width 768, 12 heads) as 6N×2L on the embedded
    Fashion-MNIST upscaled to 64×64, tokenised by elt's VQ-VAE to 16×16 = 256 tokens of 1024 codes (the
    token grid and codebook of the ImageNet rows), trained in bf16 with the ImageNet rows' optimiser
    settings at a tenth of their batch: a single-GPU check of throughput and of the any-time curve."""
    return Config(
        name="fmnist64-maskgit-B-6Nx2L",
        model=ModelConfig(width=768, heads=12, unique_layers=6, max_loops=2, min_loops=1, dropout=0.1),
        data=DataConfig(dataset="fmnist", image_size=64),
        tokenizer=TokenizerConfig(kind="vqvae", codebook_size=1024, latent_dim=16, hidden=64, downsample_stages=2,
                                  steps=2000, batch_size=64),
        train=TrainConfig(steps=20_000, batch_size=64, lr=2e-4, warmup_steps=1000, ema_decay=0.999,
                          precision="bf16", compile=True, ckpt_every=2000, log_every=100),
        sample=SampleConfig(steps=12, guidance=2.0, batch_size=100, precision="bf16"),
        eval=EvalConfig(n=1000),
    )


def _fmnist_dit() -> Config:
    """Diffusion demo in pixel space: 28×28 zero-padded to 32×32, 4×4 patches → 64 tokens."""
    return Config(
        name="fmnist-dit-2Nx4L",
        framework="diffusion",
        model=ModelConfig(width=128, heads=4, unique_layers=2, max_loops=4, min_loops=1, patch_size=4),
        # Shifted cosine with reference 16: log-SNR shifted by 2·log(16/32) = −1.39 (more noise). At
        # 1800 steps (guidance 3, 200 samples) it beat the plain cosine (acc 0.80/0.86 at L=1/4 vs
        # 0.75/0.84) and simple diffusion's +1.39 for 32×32 (0.63/0.72; with b = −1: 0.58/0.61).
        diffusion=DiffusionConfig(prediction="v", schedule="shifted_cosine", shift_reference=16, weight_bias=-3.0),
        data=DataConfig(dataset="fmnist"),
        tokenizer=TokenizerConfig(kind="pixel", pad_to=32),
        # 3000 steps of batch 64 (~3.2 epochs) in bf16 where the CPU has it (AVX512-BF16/AMX; fp32 elsewhere,
        # ~2x slower), the block compiled once. bf16 halves the step here (fmnist-dit bench: 214 vs 413 ms);
        # 2600 steps gave acc 0.854 at L=1 where 2200 fp32 steps gave 0.794-0.830.
        train=TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup_steps=100, weight_decay=0.0,
                          ema_decay=0.998, compile=True, precision="auto"),
        # 25 DDIM steps (as good as 32 here: acc 0.834/0.890, fd 78.3/50.8 at L=1/4 against 0.830/0.888,
        # 78.4/50.1) and guidance 3 (uncond + 3·(cond − uncond); 2 gave acc 0.76 at L=4 on an earlier run).
        sample=SampleConfig(steps=25, guidance=3.0, sampler="ddim", batch_size=100, precision="auto"),
        eval=EvalConfig(n=500),
    )


def _fmnist_dit_kl() -> Config:
    """Diffusion on the latents of a small KL-VAE trained by elt (28×28 → 7×7×4), patch 1."""
    cfg = _fmnist_dit()
    cfg.name = "fmnist-dit-kl-2Nx4L"
    cfg.model.patch_size = 1
    cfg.tokenizer = TokenizerConfig(kind="klvae", latent_dim=4, hidden=64, downsample_stages=2, steps=1500,
                                    kl_weight=1e-4)
    return cfg


def _digits_dit() -> Config:
    return Config(
        name="digits-dit-2Nx4L",
        framework="diffusion",
        model=ModelConfig(width=64, heads=4, unique_layers=2, max_loops=4, min_loops=1, patch_size=2),
        # The plain cosine: the resolution shift (+4.2 at 8×8) leaves too little noise (acc 0.1 vs 0.9).
        diffusion=DiffusionConfig(schedule="cosine"),
        data=DataConfig(dataset="digits"),
        tokenizer=TokenizerConfig(kind="pixel"),
        train=TrainConfig(steps=300, batch_size=64, lr=2e-3, warmup_steps=30, weight_decay=0.0, ema_decay=0.99,
                          ckpt_every=100),
        sample=SampleConfig(steps=16, guidance=1.5, sampler="ddim", batch_size=200),
        eval=EvalConfig(n=200, classifier_epochs=30.0),
    )


def _imagenet_dit(n: int, loops: int):
    """The paper's diffusion rows (its ImageNet-256 DiT table): SD v1.4 VAE latents 32×32×4, patch 2 (256 tokens),
    effective depth N·L = 32 for ELT (16 and 32 for the DiT baselines, L = 1). Width (unstated): 1920
    with 16 heads reproduces the reported sizes (≈18·d² per adaLN layer: 1N = 69M, 16N = 1.1B, 32N = 2.1B).
    guidance 3.0 is read as our diffusion scale s (uncond + s·(cond − uncond)). Set tokenizer.path to a local
    copy of the SD VAE."""
    def make() -> Config:
        return Config(
            name=f"dit-{n}Nx{loops}L",
            framework="diffusion",
            model=ModelConfig(width=1920, heads=16, unique_layers=n, max_loops=loops, min_loops=1, patch_size=2),
            diffusion=DiffusionConfig(prediction="v", schedule="shifted_cosine", weight_bias=-3.0),
            data=DataConfig(dataset="folder", image_size=256),
            tokenizer=TokenizerConfig(kind="diffusers_vae", path="weights/sd-vae-ft-v1-4"),
            # The paper gives lr and batch for diffusion, not β or weight decay: DiT's AdamW (β = (0.9, 0.999),
            # no weight decay), not the masked recipe's β₂ = 0.96 / 0.045.
            train=TrainConfig(steps=500_000, batch_size=512, lr=1e-4, warmup_steps=0, weight_decay=0.0, beta2=0.999,
                              grad_clip=1.0, ema_decay=0.9999, precision="bf16", ckpt_every=10_000, log_every=100),
            sample=SampleConfig(steps=512, guidance=3.0, sampler="ddpm", batch_size=64, clip_denoised=False),
            eval=EvalConfig(n=50_000),
        )
    return make


def _mfmnist_video() -> Config:
    """The video demo (the paper's masked video setting at CPU scale): class-conditional moving
    Fashion-MNIST, 9 frames of 36×36 in which a 28×28 garment (never resized) moves 8 px (1 px per frame)
    in one of 8 directions from a start on a 4-px grid; elt's layered tokenizer (the garment's 28×28 window
    as 7×7 appearance tokens and 1 motion token that places it in every frame: 50 tokens); the masked
    framework; guidance 2 (the paper's video model uses none: `elt evaluate --guidance 1` gives the
    unguided table, docs/video.md); bf16 where the CPU has it."""
    return Config(
        name="mfmnist-video-2Nx4L",
        model=ModelConfig(width=128, heads=4, unique_layers=2, max_loops=4, min_loops=1),
        data=DataConfig(dataset="mfmnist", image_size=36, frames=9, speed_min=1.0, speed_max=1.0, start_grid=4),
        # The garment's window alone (sprite_size 28) instead of the whole first frame: a third fewer tokens,
        # and a garment's tokens sit at the same positions wherever it starts; a frame's pixels outside the window
        # are black by construction, so no decoded frame can hold more than one garment's worth of it.
        # Reconstructions' per-frame accuracy / FD at 2000 steps 0.807 / 26.9 (1200: 0.801 / 41.1, and generated
        # frames 0.82-0.86 vs 0.83-0.89); the whole first frame (sprite_size 0: 81 + 1 tokens) 0.86, but its
        # samples reached 0.62-0.69 (layered: 0.83-0.89), in 811 s of training instead of 464. docs/video.md.
        tokenizer=TokenizerConfig(kind="motionvq", codebook_size=1024, latent_dim=16, hidden=64, downsample_stages=2,
                                  motion_tokens=1, max_shift=8, sprite_size=28, steps=2000, batch_size=64,
                                  lr=2e-3),
        train=TrainConfig(steps=3000, batch_size=32, lr=2e-3, warmup_steps=100, ema_decay=0.995, compile=True,
                          precision="auto"),
        # The motion token decoded last, given the whole garment, and drawn at temperature 1 (the schedule's
        # annealed temperature, 0.5 at the end, picked the commonest directions: clip FD 145-182 vs 66-69).
        sample=SampleConfig(steps=12, guidance=2.0, batch_size=100, precision="auto", motion_order="last",
                            motion_temperature=1.0),
        eval=EvalConfig(n=500),
    )


def _mfmnist64_video() -> Config:
    """The full-size moving Fashion-MNIST preset: 16 frames of 64×64 (1–2 px per frame), a MAGVIT-style
    3D VQ-VAE (16×64×64 → 4×8×8 = 256 tokens, 256 codes). Its 30-minute CPU run does not make
    recognisable garments (docs/video.md); it is the starting point of a GPU recipe."""
    return Config(
        name="mfmnist64-video-2Nx4L",
        model=ModelConfig(width=128, heads=4, unique_layers=2, max_loops=4, min_loops=1),
        data=DataConfig(dataset="mfmnist", image_size=64, frames=16, clips=20000),
        # 4×8×8 tokens of 256 8-d codes. At 400 steps 256 codes reconstruct about as well as 1024 (per-frame
        # accuracy 0.36 vs 0.39) with far more predictable tokens (unigram entropy 5.0 vs 6.6 nats);
        # 1×16×16 tokens (time folded away) reconstructed worse (0.28-0.33), 4×16×16 is 4x the transformer's cost.
        tokenizer=TokenizerConfig(kind="vqvae", codebook_size=256, latent_dim=8, hidden=64, downsample_stages=3,
                                  temporal_stages=2, steps=1500, batch_size=16, lr=3e-3),
        # lr 3e-3 vs 1.5e-3 on one cached tokenizer: fd_mfmnist_c3d 368 / 329 vs 466 / 449 at L = 1 / 4.
        train=TrainConfig(steps=1100, batch_size=32, lr=3e-3, warmup_steps=100, ema_decay=0.995, compile=True,
                          precision="auto"),
        sample=SampleConfig(steps=12, guidance=1.0, batch_size=50, precision="auto"),
        eval=EvalConfig(n=300),
    )


def _mfmnist_motion_video() -> Config:
    """The same clips labelled by their direction of motion (8 classes): the label is only visible
    across frames."""
    cfg = _mfmnist_video()
    cfg.name = "mfmnist-motion-video-2Nx4L"
    cfg.data.label = "motion"
    return cfg


def _ucf101_video() -> Config:
    """The paper's UCF-101 row (its video table): 6N×4L at width 1024 (76M parameters), 16×128×128 clips
    as 4×16×16 = 1024 tokens of a 3D VQ with codebook 1024, 12 decoding steps, no guidance; the MAGVIT
    recipe (batch 256, lr 1e-4, 5k warmup, cosine, label smoothing 1e-4, dropout 0.1). The paper uses
    MAGVIT's pretrained 3D-VQ: export a port as TorchScript and set tokenizer.kind=torchscript and
    tokenizer.path, or train elt's (the default here). Training length is unstated: 200k steps."""
    return Config(
        name="ucf101-magvit-6Nx4L",
        model=ModelConfig(width=1024, heads=16, unique_layers=6, max_loops=4, min_loops=1, dropout=0.1, arch="bert"),
        data=DataConfig(dataset="ucf101", image_size=128, frames=16, data_dir="data/UCF-101"),
        tokenizer=TokenizerConfig(kind="vqvae", codebook_size=1024, latent_dim=32, hidden=128, downsample_stages=3,
                                  temporal_stages=2, steps=100_000, batch_size=32, lr=2e-4),
        train=TrainConfig(steps=200_000, batch_size=256, lr=1e-4, warmup_steps=5000, weight_decay=0.045,
                          grad_clip=1.0, label_smoothing=1e-4, ema_decay=0.9999, precision="bf16",
                          ckpt_every=10_000, log_every=100),
        sample=SampleConfig(steps=12, guidance=1.0, choice_temperature=4.5, batch_size=32, precision="bf16"),
        eval=EvalConfig(n=10_000),
    )


PRESETS = {
    "fmnist-maskgit-2Nx4L": _fmnist_maskgit,
    "fmnist-maskgit-1Nx8L": _fmnist_maskgit_1x8,
    "fmnist-maskgit-w256-2Nx4L": _fmnist_maskgit_w256,
    "digits-maskgit-2Nx4L": _digits_maskgit,
    # ELT rows of the paper's masked ImageNet table and their non-looped baselines (L = 1).
    "maskgit-L-8Nx3L": _imagenet_maskgit("L", 8, 3),
    "maskgit-L-12Nx2L": _imagenet_maskgit("L", 12, 2),
    "maskgit-XL-7Nx4L": _imagenet_maskgit("XL", 7, 4),
    "maskgit-L-24Nx1L": _imagenet_maskgit("L", 24, 1),
    "maskgit-XL-28Nx1L": _imagenet_maskgit("XL", 28, 1),
    # The B and H rows of the paper's throughput comparison (equal FLOPs against the non-looped model of
    # the scale's baseline depth: B 12, H 32); H trains with 5x the weight decay.
    "maskgit-B-6Nx2L": _imagenet_maskgit("B", 6, 2),
    "maskgit-B-12Nx1L": _imagenet_maskgit("B", 12, 1),
    "maskgit-H-8Nx4L": _imagenet_maskgit("H", 8, 4),
    "maskgit-H-32Nx1L": _imagenet_maskgit("H", 32, 1),
    "fmnist64-maskgit-B-6Nx2L": _fmnist64_maskgit_b,
    "fmnist-dit-2Nx4L": _fmnist_dit,
    "fmnist-dit-kl-2Nx4L": _fmnist_dit_kl,
    "digits-dit-2Nx4L": _digits_dit,
    # Diffusion rows of the paper's ImageNet table and the two DiT baselines.
    "dit-16Nx2L": _imagenet_dit(16, 2),
    "dit-8Nx4L": _imagenet_dit(8, 4),
    "dit-4Nx8L": _imagenet_dit(4, 8),
    "dit-1Nx32L": _imagenet_dit(1, 32),
    "dit-16Nx1L": _imagenet_dit(16, 1),
    "dit-32Nx1L": _imagenet_dit(32, 1),
    # Video (the paper's MAGVIT setting): the CPU demo on moving Fashion-MNIST and the paper's UCF-101 model.
    "mfmnist-video-2Nx4L": _mfmnist_video,
    "mfmnist64-video-2Nx4L": _mfmnist64_video,
    "mfmnist-motion-video-2Nx4L": _mfmnist_motion_video,
    "ucf101-magvit-6Nx4L": _ucf101_video,
}
# The paper's parameter counts beside each preset it reports (`elt presets` prints both). "≈": not
# reported; the paper's own rule of about 12·d² per layer, for the throughput rows.
PAPER_PARAMS = {
    "maskgit-L-8Nx3L": "101M", "maskgit-L-12Nx2L": "152M", "maskgit-XL-7Nx4L": "111M",
    "maskgit-L-24Nx1L": "303M (MaskGIT-Lg)", "maskgit-XL-28Nx1L": "446M (MaskGIT-XL)",
    "maskgit-B-6Nx2L": "≈42M", "maskgit-B-12Nx1L": "≈85M", "maskgit-H-8Nx4L": "≈157M", "maskgit-H-32Nx1L": "≈629M",
    "dit-1Nx32L": "69M", "dit-4Nx8L": "271M", "dit-8Nx4L": "539M", "dit-16Nx2L": "1.1B",
    "dit-16Nx1L": "1.1B (DiT-16)", "dit-32Nx1L": "2.1B (DiT-32)", "ucf101-magvit-6Nx4L": "76M",
}
ALIASES = {"fmnist-maskgit": "fmnist-maskgit-1Nx8L", "digits-maskgit": "digits-maskgit-2Nx4L",
           "fmnist-dit": "fmnist-dit-2Nx4L", "fmnist-dit-kl": "fmnist-dit-kl-2Nx4L", "digits-dit": "digits-dit-2Nx4L",
           "mfmnist-video": "mfmnist-video-2Nx4L", "mfmnist64-video": "mfmnist64-video-2Nx4L", "mfmnist-motion-video": "mfmnist-motion-video-2Nx4L"}
PRESETS.update({alias: PRESETS[target] for alias, target in ALIASES.items()})


def get_preset(name: str) -> Config:
    return copy.deepcopy(PRESETS[name]()).validate()


def load_config(spec: str) -> Config:
    """A preset name or a YAML file path → validated Config."""
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        return read_config(spec)
    if spec not in PRESETS:
        raise ConfigError(f"unknown preset {spec!r}{suggest(spec, PRESETS)}; `elt presets` lists them")
    return get_preset(spec)
