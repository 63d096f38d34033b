"""Typed configuration: dataclasses, YAML load/save, `section.key=value` overrides, validation.

A run folder's `config.yaml` is the fully resolved config and is itself a valid `--config`.
Every error names the offending key and how to fix it (unknown keys get the closest suggestion).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .choices import (BEYOND_LMAX, DATASETS, DEVICES, DIFFUSION_SAMPLERS, FRAMEWORKS, LAMBDA_SCHEDULES,
                      LINT_DISTRIBUTIONS, LINT_MODES, LR_SCHEDULES, MASKED_ARCHS, MOTION_ORDERS, MOVING_LABELS,
                      NOISE_SCHEDULES, OBJECTIVES, PARALLEL, PRECISIONS, PREDICTIONS, TOKENIZERS, UCF101_FOLDS,
                      VIDEO_DATASETS, one_of)
from .utils.atomic import write_text


SEED_LIMIT = 2 ** 63  # torch and numpy generators take seeds below this


# One value's checks, shared by the command line's arguments, the Python API and the HTTP service: each
# returns the value as its type or raises ValueError("must be ..., got ...") for the caller to prefix.

def check_count(value) -> int:
    """A count of samples, steps or loops: an integer >= 1 (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def check_seed(value) -> int:
    """A sampling or training seed: an integer in 0 … 2⁶³−1 (what torch's and numpy's generators take)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer in 0..{SEED_LIMIT - 1}, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"must be in 0..{SEED_LIMIT - 1}, got {value}")
    return value


GUIDANCE_MAX = 1000.0  # far above the useful 1–10; s·(cond − uncond) must stay far inside float32 and bf16


def check_guidance(value) -> float:
    """A guidance scale s of uncond + s·(cond − uncond): a number in 0 … 1000 (1 = no guidance). Useful scales
    are 1–10; beyond 1000 the guided output only amplifies noise, and at ~1e36 it overflows float32."""
    said = f"must be a number in 0..{GUIDANCE_MAX:g} (1 = no guidance; useful scales are 1-10)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{said}, got {value!r}")
    if not (0 <= value <= GUIDANCE_MAX):
        raise ValueError(f"{said}, got {value}")
    return float(value)


def check_finite(value, low: float = 0.0, strict: bool = True, meaning: str | None = None) -> float:
    """A finite number above `low` (strictly, or at least): a budget, a halting threshold (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and (value > low if strict else value >= low)):
        raise ValueError(f"must be a finite number {'>' if strict else '>='} {low:g}"
                         f"{f' ({meaning})' if meaning else ''}, got {value!r}")
    return value


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pos(x) -> bool:
    return _finite(x) and x > 0


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the fix."""


@dataclass
class ModelConfig:
    width: int = 128
    heads: int = 4
    mlp_ratio: float = 4.0
    unique_layers: int = 2          # N
    max_loops: int = 4              # Lmax (training teacher)
    min_loops: int = 1              # Lmin (smallest student loop count)
    dropout: float = 0.0            # masked framework only
    patch_size: int = 2             # diffusion framework only: p×p latent patches per token
    arch: str = "prenorm"           # masked framework: prenorm | bert (MaskGIT's post-norm BERT, tied MLM head)


@dataclass
class DiffusionConfig:
    """Diffusion framework settings (the paper's DiT setting); ignored by the masked framework."""
    prediction: str = "v"           # v | eps | x0: what the network predicts (the others are derived)
    schedule: str = "shifted_cosine"  # shifted_cosine | cosine (shift 0)
    shift: typing.Optional[float] = None  # log-SNR shift; None: 2·log(shift_reference / latent size)
    shift_reference: int = 64       # d_ref of the shifted cosine
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    weight_bias: float = -3.0       # b of the sigmoid weighting sigmoid(b − λ) on the ε-MSE


@dataclass
class DataConfig:
    dataset: str = "fmnist"          # fmnist | digits | folder | mfmnist (moving Fashion-MNIST clips) | ucf101
    data_dir: typing.Optional[str] = None
    image_size: typing.Optional[int] = None   # folder: square resize; fmnist: bicubic resize (28); mfmnist: canvas (64); ucf101: crop (128)
    strict_images: bool = False      # folder/ucf101: a corrupt image or video is an error instead of skipped
    frames: int = 16                 # video: frames per clip
    label: str = "class"             # mfmnist: what the label is, the garment's class or its motion
    clips: typing.Optional[int] = None    # video: use at most this many training clips (None: all)
    fold: int = 1                    # ucf101: official train/test split 1, 2 or 3
    speed_min: float = 1.0           # mfmnist: pixels per frame per moving axis, drawn from [speed_min, speed_max]
    speed_max: float = 2.0
    start_grid: int = 1              # mfmnist: the first frame's corner on multiples of this many pixels


@dataclass
class TokenizerConfig:
    kind: str = "vqvae"              # masked: vqvae | pixel (quantised levels); diffusion: pixel | klvae | diffusers_vae
    codebook_size: int = 512         # vqvae codes, or pixel levels
    latent_dim: int = 16
    hidden: int = 64
    downsample_stages: int = 2
    temporal_stages: int = 0         # video VQ: how many stride-2 stages halve time (the first ones)
    motion_tokens: int = 1           # motionvq: tokens for the motion of a clip (beside the first frame's)
    max_shift: int = 8               # motionvq: the largest shift per axis between frame 0 and any frame, pixels
    motion_codes: int = 32           # motionvq: codes of the motion tokens' own codebook
    sprite_size: int = 0             # motionvq: appearance tokens code this s×s window of the first frame and the
    #                                  motion tokens place it in every frame (0: the whole first frame, max_shift)
    steps: int = 1200
    batch_size: int = 128
    lr: float = 2e-3
    precision: str = "auto"          # fp32 | bf16 | auto: bf16 autocast where the hardware has it
    pad_to: typing.Optional[int] = None   # diffusion pixel space: zero-pad images to this size
    kl_weight: float = 1e-4          # klvae: weight of the KL term (per latent value)
    path: typing.Optional[str] = None     # diffusers_vae: local AutoencoderKL folder; torchscript: the .pt file
    sha256: typing.Optional[str] = None   # torchscript: the file's expected SHA-256 (checked when given)


@dataclass
class TrainConfig:
    objective: str = "ilsd"          # ilsd | vanilla
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "cosine"      # cosine | constant
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.045
    beta1: float = 0.9
    beta2: float = 0.96
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    label_dropout: float = 0.1
    motion_loss_weight: float = 1.0  # motionvq: a motion token's weight in the masked losses (1: the paper's)
    ema_decay: float = 0.999         # 0 disables EMA
    grad_accum: int = 1              # micro-batches per step; batch_size is the global batch
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "fp32"          # fp32 | bf16 (autocast) | auto (bf16 where the hardware has it)
    compile: bool = False            # torch.compile the block once; every loop and every L reuse it
    parallel: str = "ddp"            # ddp | fsdp (FSDP2 fully_shard), used under torchrun
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000           # rolling checkpoints/last
    keep_every: int = 0              # also keep checkpoints/step_NNNNNNN every this many steps (0: never)
    max_nonfinite: int = 20          # non-finite losses are skipped; stop after this many


@dataclass
class ILSDConfig:
    """ILSD's ablation switches (core.ilsd.ILSDOptions); the defaults are the paper's. Ignored by
    train.objective=vanilla."""
    lambda_schedule: str = "linear"  # linear | cosine | constant: λ, the student's ground-truth share
    lambda_horizon: float = 1.0      # λ reaches 0 at this fraction of training (linear, cosine)
    lambda_value: float = 0.5        # λ of the constant schedule
    teacher_gt: bool = True          # the teacher's ground-truth loss L_GT(F_Lmax)
    student_gt: bool = True          # the student's ground-truth loss λ·L_GT(F_Lint)
    distill: bool = True             # the distillation (1-λ)·L_dist(F_Lint, stopgrad F_Lmax)
    lint_mode: str = "step"          # how Lint is drawn: step (one per training step, the paper's) | example
    lint_distribution: str = "uniform"  # uniform (the paper's) | flops: p(L) ∝ 1/FLOPs(L), the same compute per exit
    temperature: float = 1.0         # distillation softmax temperature (masked framework; diffusion: 1)


@dataclass
class SampleConfig:
    steps: int = 12                  # decoding steps K (masked) or denoising steps (diffusion)
    guidance: float = 1.0            # classifier-free guidance s: uncond + s·(cond − uncond), both frameworks;
                                     # 1 = off (the conditional model alone), 0 = unconditional
    sampler: str = "ddim"            # diffusion: ddim | ddpm | dpmpp2m (DPM-Solver++ 2M, multistep)
    guidance_loops: typing.Optional[int] = None  # the unconditional half of guidance at this many loops (None: L's)
    clip_denoised: bool = True       # diffusion in pixel space: clip the predicted x0 to [-1, 1]
    temp_base: float = 0.5           # STemp_k = temp_base + temp_anneal·(1 − ratio)
    temp_anneal: float = 0.8
    choice_temperature: float = 4.5  # Gumbel noise scale on confidences, annealed to 0
    motion_order: str = "joint"      # motionvq: its motion tokens decoded by confidence like the rest (joint),
                                     # all at the first step (first) or kept for the last step (last)
    motion_temperature: typing.Optional[float] = None  # motionvq: its motion tokens' sampling temperature
                                     # (None: STemp_k, as every other token)
    batch_size: int = 250
    use_ema: bool = True
    precision: str = "fp32"          # fp32 | bf16 (autocast) | auto (bf16 where the hardware has it)


@dataclass
class EvalConfig:
    n: int = 1000                    # samples per loop count (class-balanced)
    loops: typing.Optional[list] = None   # default: 1 .. max_loops + 2
    classifier_epochs: float = 2.0
    seed: int = 0
    ref_clips: int = 5000            # video: the real test clips of the reference statistics (the frames'
                                     # use the first 1000 of them, the tokenizer reconstruction the first 500)


@dataclass
class Config:
    name: str = "custom"
    framework: str = "masked"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ilsd: ILSDConfig = field(default_factory=ILSDConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def objective_label(self) -> str:
        """train.objective with the ILSD switches that differ from the paper's, for reports and captions:
        'ilsd', 'vanilla', 'ilsd[lambda_schedule=cosine, distill=False]'."""
        if self.train.objective != "ilsd":
            return self.train.objective
        changed = [f"{f.name}={getattr(self.ilsd, f.name)}" for f in fields(ILSDConfig)
                   if getattr(self.ilsd, f.name) != f.default]
        return f"ilsd[{', '.join(changed)}]" if changed else "ilsd"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Atomic: readers (other ranks, a resumed run) never see a half-written file."""
        write_text(path, self.to_yaml())

    def validate(self) -> "Config":
        """Every value range-checked before any work; the error names the key and the fix."""
        m, d, tk, t, sp, ev, df = self.model, self.data, self.tokenizer, self.train, self.sample, self.eval, self.diffusion
        video_tok = ("vqvae", "motionvq", "torchscript")
        checks = [
            (self.framework in FRAMEWORKS, "framework", f"unknown framework {self.framework!r}; choose "
             f"{one_of(FRAMEWORKS)}"),
            (m.width > 0 and m.heads > 0 and m.width % m.heads == 0, "model.width",
             f"width {m.width} must be positive and divisible by heads {m.heads}"),
            (_pos(m.mlp_ratio), "model.mlp_ratio", "must be a number > 0 (4 is usual)"),
            (m.unique_layers >= 1, "model.unique_layers", "must be >= 1"),
            (m.max_loops >= 1, "model.max_loops", "must be >= 1"),
            (1 <= m.min_loops <= m.max_loops, "model.min_loops", f"must be in 1..max_loops ({m.max_loops})"),
            (0 <= m.dropout < 1, "model.dropout", "must be in [0, 1)"),
            (m.patch_size >= 1, "model.patch_size", "must be >= 1"),
            (m.arch in MASKED_ARCHS, "model.arch", f"choose {one_of(MASKED_ARCHS)}"),
            (m.arch == "prenorm" or self.framework == "masked", "model.arch",
             "bert is the masked framework's layout; the diffusion network is DiT's (leave model.arch=prenorm)"),
            (d.dataset in DATASETS, "data.dataset", f"choose {one_of(DATASETS)}"),
            (self.ilsd.lambda_schedule in LAMBDA_SCHEDULES, "ilsd.lambda_schedule", f"choose {one_of(LAMBDA_SCHEDULES)}"),
            (_pos(self.ilsd.lambda_horizon) and self.ilsd.lambda_horizon <= 1, "ilsd.lambda_horizon",
             "must be in (0, 1]: the fraction of training over which λ falls to 0"),
            (_finite(self.ilsd.lambda_value) and 0 <= self.ilsd.lambda_value <= 1, "ilsd.lambda_value",
             "must be in [0, 1]"),
            (self.ilsd.teacher_gt or self.ilsd.student_gt or self.ilsd.distill, "ilsd.teacher_gt",
             "every ILSD term is off; turn on at least one of ilsd.teacher_gt, ilsd.student_gt, ilsd.distill"),
            (self.ilsd.lint_mode in LINT_MODES, "ilsd.lint_mode", f"choose {one_of(LINT_MODES)}"),
            (self.ilsd.lint_distribution in LINT_DISTRIBUTIONS, "ilsd.lint_distribution",
             f"choose {one_of(LINT_DISTRIBUTIONS)}"),
            (_pos(self.ilsd.temperature), "ilsd.temperature", "must be a number > 0 (1: the paper's)"),
            (self.ilsd.temperature == 1 or self.framework == "masked", "ilsd.temperature",
             "applies to the masked framework's logits; diffusion distils with an MSE: leave it at 1"),
            (d.dataset not in VIDEO_DATASETS or (self.framework == "masked" and tk.kind in video_tok), "tokenizer.kind",
             "video data needs the masked framework with a vqvae (3D), motionvq or torchscript tokenizer"),
            (tk.kind != "motionvq" or d.dataset in VIDEO_DATASETS, "tokenizer.kind",
             "motionvq codes clips; use vqvae for images"),
            (_finite(t.motion_loss_weight) and t.motion_loss_weight > 0, "train.motion_loss_weight",
             "must be a finite number > 0 (1: a motion token counts as any token)"),
            (t.motion_loss_weight == 1 or tk.kind == "motionvq", "train.motion_loss_weight",
             "weighs a motionvq tokenizer's motion tokens; this run has none (leave it at 1)"),
            (sp.motion_order in MOTION_ORDERS, "sample.motion_order", f"choose {one_of(MOTION_ORDERS)}"),
            (sp.motion_temperature is None or (_pos(sp.motion_temperature) and tk.kind == "motionvq"),
             "sample.motion_temperature", "must be a finite number > 0, for a motionvq tokenizer (or null)"),
            (sp.motion_order == "joint" or tk.kind == "motionvq", "sample.motion_order",
             "orders a motionvq tokenizer's motion tokens; this run has none (leave it at joint)"),
            (d.image_size is None or d.image_size >= 8, "data.image_size", "must be >= 8 pixels (or null: the data's own)"),
            (d.dataset != "mfmnist" or d.image_size is None or d.image_size >= 28, "data.image_size",
             "a moving Fashion-MNIST canvas must hold a 28×28 garment: use 28 or more"),
            (d.frames >= 2, "data.frames", "must be >= 2"),
            (d.label in MOVING_LABELS, "data.label", f"choose {one_of(MOVING_LABELS)}"),
            (d.clips is None or d.clips >= 2, "data.clips", "must be >= 2 (or null for all)"),
            (d.fold in UCF101_FOLDS, "data.fold", f"UCF-101's official splits are {one_of(UCF101_FOLDS)}"),
            (_pos(d.speed_min) and _finite(d.speed_max) and d.speed_min <= d.speed_max, "data.speed_min",
             "need 0 < data.speed_min <= data.speed_max"),
            (d.start_grid >= 1, "data.start_grid", "must be >= 1 (1: any pixel)"),
            (tk.kind in TOKENIZERS.get(self.framework, ()), "tokenizer.kind",
             f"choose {one_of(TOKENIZERS.get(self.framework, ('?',)))} for the {self.framework} framework"),
            (tk.codebook_size >= 2, "tokenizer.codebook_size", "must be >= 2"),
            (tk.latent_dim >= 1, "tokenizer.latent_dim", "must be >= 1"),
            (tk.hidden >= 4, "tokenizer.hidden", "must be >= 4 channels"),
            (tk.downsample_stages >= 0, "tokenizer.downsample_stages", "must be >= 0"),
            (tk.temporal_stages >= 0 and d.frames % 2 ** tk.temporal_stages == 0,
             "tokenizer.temporal_stages", "must be >= 0 with data.frames divisible by 2^temporal_stages"),
            (tk.motion_tokens >= 1 and tk.max_shift >= 1, "tokenizer.motion_tokens",
             "motion_tokens and max_shift must be >= 1"),
            (tk.motion_codes >= 2, "tokenizer.motion_codes", "must be >= 2"),
            (tk.sprite_size == 0 or (tk.kind == "motionvq" and 2 ** tk.downsample_stages <= tk.sprite_size
                                     < (d.image_size or 1 << 30) and tk.sprite_size % 2 ** tk.downsample_stages == 0),
             "tokenizer.sprite_size", "must be 0 (the whole frame) or, for a motionvq tokenizer, below data.image_size "
             "and divisible by 2^tokenizer.downsample_stages"),
            (tk.steps >= 1, "tokenizer.steps", "must be >= 1"),
            (tk.batch_size >= 1, "tokenizer.batch_size", "must be >= 1"),
            (_pos(tk.lr), "tokenizer.lr", "must be a finite number > 0"),
            (_finite(tk.kl_weight) and tk.kl_weight >= 0, "tokenizer.kl_weight", "must be a finite number >= 0"),
            (tk.pad_to is None or tk.pad_to >= 1, "tokenizer.pad_to", "must be >= 1"),
            (tk.precision in PRECISIONS, "tokenizer.precision", f"choose {one_of(PRECISIONS)}"),
            (t.objective in OBJECTIVES, "train.objective", f"choose {one_of(OBJECTIVES)}"),
            (t.steps >= 1, "train.steps", "must be >= 1"),
            (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (_pos(t.lr), "train.lr", "must be a finite number > 0"),
            (t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0"),
            (_finite(t.min_lr_ratio) and 0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio",
             "must be in [0, 1] (the cosine schedule's floor as a fraction of train.lr)"),
            (_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", "must be a finite number >= 0"),
            (_finite(t.beta1) and 0 <= t.beta1 < 1, "train.beta1", "must be in [0, 1) (AdamW's first-moment decay, 0.9)"),
            (_finite(t.beta2) and 0 <= t.beta2 < 1, "train.beta2",
             "must be in [0, 1) (AdamW's second-moment decay, 0.96-0.999)"),
            (_finite(t.grad_clip) and t.grad_clip >= 0, "train.grad_clip", "must be a finite number >= 0 (0: no clipping)"),
            (t.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
            (t.device in DEVICES, "train.device", f"choose {one_of(DEVICES)}"),
            (t.precision in PRECISIONS, "train.precision", f"choose {one_of(PRECISIONS)}"),
            (t.parallel in PARALLEL, "train.parallel", f"choose {one_of(PARALLEL)}"),
            (t.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"choose {one_of(LR_SCHEDULES)}"),
            (0 <= t.label_dropout < 1, "train.label_dropout", "must be in [0, 1)"),
            (0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)"),
            (0 <= t.ema_decay < 1, "train.ema_decay", "must be in [0, 1) (0 disables EMA)"),
            (0 <= t.seed < SEED_LIMIT, "train.seed", f"must be in 0..{SEED_LIMIT - 1}"),
            (t.log_every >= 1, "train.log_every", "must be >= 1"),
            (t.ckpt_every >= 1, "train.ckpt_every", "must be >= 1"),
            (t.keep_every >= 0, "train.keep_every", "must be >= 0 (0: keep none)"),
            (t.max_nonfinite >= 0, "train.max_nonfinite", "must be >= 0"),
            (sp.steps >= 1, "sample.steps", "must be >= 1"),
            (_finite(sp.guidance) and 0 <= sp.guidance <= GUIDANCE_MAX, "sample.guidance",
             f"must be a number in 0..{GUIDANCE_MAX:g} (1: no guidance; useful scales are 1-10)"),
            (sp.batch_size >= 1, "sample.batch_size", "must be >= 1"),
            (_pos(sp.temp_base), "sample.temp_base", "must be > 0 (the last step samples at it)"),
            (_finite(sp.temp_anneal) and sp.temp_anneal >= 0, "sample.temp_anneal", "must be >= 0"),
            (_finite(sp.choice_temperature) and sp.choice_temperature >= 0, "sample.choice_temperature",
             "must be >= 0 (0: no Gumbel noise)"),
            (sp.sampler in DIFFUSION_SAMPLERS, "sample.sampler", f"choose {one_of(DIFFUSION_SAMPLERS)}"),
            (sp.sampler == "ddim" or self.framework == "diffusion", "sample.sampler",
             f"{sp.sampler} is a diffusion solver; the masked framework decodes with MaskGIT's schedule (drop it)"),
            (sp.guidance_loops is None or (isinstance(sp.guidance_loops, int) and sp.guidance_loops >= 1),
             "sample.guidance_loops", "must be a loop count >= 1 (or null: the step's own)"),
            (sp.precision in PRECISIONS, "sample.precision", f"choose {one_of(PRECISIONS)}"),
            (ev.n >= 2, "eval.n", "must be >= 2 (Fréchet distance needs a covariance)"),
            (_pos(ev.classifier_epochs), "eval.classifier_epochs", "must be a finite number > 0"),
            (0 <= ev.seed < SEED_LIMIT, "eval.seed", f"must be in 0..{SEED_LIMIT - 1}"),
            (isinstance(ev.ref_clips, int) and ev.ref_clips >= 2, "eval.ref_clips",
             "must be an integer >= 2 (Fréchet distance needs a covariance)"),
            (df.prediction in PREDICTIONS, "diffusion.prediction", f"choose {one_of(PREDICTIONS)}"),
            (df.schedule in NOISE_SCHEDULES, "diffusion.schedule", f"choose {one_of(NOISE_SCHEDULES)}"),
            (df.shift is None or _finite(df.shift), "diffusion.shift", "must be a finite number (or null)"),
            (_finite(df.logsnr_min) and _finite(df.logsnr_max) and df.logsnr_min < df.logsnr_max,
             "diffusion.logsnr_min", "must be below diffusion.logsnr_max, both finite"),
            (df.shift_reference >= 1, "diffusion.shift_reference", "must be >= 1"),
            (_finite(df.weight_bias), "diffusion.weight_bias", "must be a finite number"),
        ]
        for ok, key, fix in checks:
            if not ok:
                raise ConfigError(f"bad config value {key}: {fix}")
        if self.eval.loops is not None and any(not isinstance(v, int) or v < 1 for v in self.eval.loops):
            raise ConfigError("bad config value eval.loops: every loop count must be an integer >= 1")
        if self.eval.loops is not None and max(self.eval.loops, default=1) > BEYOND_LMAX * m.max_loops:
            raise ConfigError(f"bad config value eval.loops: loop counts go up to {BEYOND_LMAX}×model.max_loops "
                              f"= {BEYOND_LMAX * m.max_loops}")
        return self


def suggest(key: str, options) -> str:
    """" (did you mean 'x'?)" for the closest of `options` — by spelling, or a name that holds `key` whole
    (train.ema → ema_decay) — else the list of options."""
    options = list(options)
    close = difflib.get_close_matches(key, options, n=1) or sorted(
        (o for o in options if key and (o.startswith(key) or key in o.split("_"))), key=len)[:1]
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is list or origin is list:
        if isinstance(value, str):
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"bad config value {key}: expected a list, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad config value {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"bad config value {key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"bad config value {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        return str(value)
    return value


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list}


def _field_type(f: dataclasses.Field):
    tp = f.type
    if isinstance(tp, str):
        tp = eval(tp, {"typing": typing, **_TYPES})  # our own annotations only
    return tp


def from_dict(data: dict, base: Config | None = None) -> Config:
    """Overlay a nested dict onto `base` (defaults if None), checking keys and types."""
    cfg = base if base is not None else Config()
    if not isinstance(data, dict):
        raise ConfigError("a config file must be a mapping of sections (model, data, train, ...)")
    top = {f.name: f for f in fields(Config)}
    for key, value in data.items():
        if key not in top:
            raise ConfigError(f"unknown config key {key!r}{suggest(key, top)}")
        section = getattr(cfg, key)
        if dataclasses.is_dataclass(section):
            if not isinstance(value, dict):
                raise ConfigError(f"config section {key!r} must be a mapping")
            inner = {f.name: f for f in fields(section)}
            for k, v in value.items():
                if k not in inner:
                    raise ConfigError(f"unknown config key {key}.{k}{suggest(k, inner)}")
                setattr(section, k, _coerce(v, _field_type(inner[k]), f"{key}.{k}"))
        else:
            setattr(cfg, key, _coerce(value, _field_type(top[key]), key))
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings (values parsed as YAML scalars)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not a YAML value ({getattr(e, 'problem', None) or e}); "
                              f"quote it or fix it, e.g. --set eval.loops=[1,2,4]") from None
        data: dict = {}
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        if len(parts) > 2:
            raise ConfigError(f"override key {key!r} is too deep; use section.key")
        from_dict(data, cfg)
    # a name that carries N and L states the real ones (`--set model.unique_layers=8 --set model.max_loops=1`
    # turns fmnist-maskgit-1Nx8L into fmnist-maskgit-8Nx1L)
    cfg.name = re.sub(r"\d+Nx\d+L", f"{cfg.model.unique_layers}Nx{cfg.model.max_loops}L", cfg.name)
    return cfg


def read_config(path: str | Path) -> Config:
    """A YAML config file (e.g. a run's config.yaml) → validated Config; `presets.load_config` also
    takes preset names."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; give an existing YAML file or a preset name")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}; fix that line (a preset name "
                          f"or a run's config.yaml are valid --config values)") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty; give a preset name, or a YAML file with the sections to set "
                          f"(e.g. a run's config.yaml)")
    return from_dict(data).validate()

