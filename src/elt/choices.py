"""The valid values of every enumerated setting, defined once: the config's validation, the command
line's `choices=` and the modules that implement them all import these. Nothing here imports torch,
so `elt --help` answers at once."""
from __future__ import annotations

FRAMEWORKS = ("masked", "diffusion")
MASKED_ARCHS = ("prenorm", "bert")                # the masked network's layout (bert: MaskGIT's, the paper's)
OBJECTIVES = ("ilsd", "vanilla")                  # vanilla: the teacher's ground-truth loss alone
DEVICES = ("auto", "cpu", "cuda")                 # auto: a CUDA GPU when one is visible, else the CPU
PRECISIONS = ("fp32", "bf16", "auto")             # auto: bf16 where the hardware computes it natively
PARALLEL = ("ddp", "fsdp")
LR_SCHEDULES = ("cosine", "constant")
LAMBDA_SCHEDULES = ("linear", "cosine", "constant")  # ILSD's λ(step); linear is the paper's
LINT_DISTRIBUTIONS = ("uniform", "flops")         # ILSD's Lint: uniform (the paper's) or p(L) ∝ 1/FLOPs(L)
LINT_MODES = ("step", "example")                  # ILSD's Lint draw: one per step (the paper's) or per example
TOKENIZERS = {"masked": ("vqvae", "motionvq", "pixel", "torchscript", "maskgit_vqgan"),
              "diffusion": ("pixel", "klvae", "diffusers_vae")}
DATASETS = ("fmnist", "digits", "folder", "mfmnist", "ucf101", "extracted")  # extracted: `elt extract` shards
VIDEO_DATASETS = ("mfmnist", "ucf101")
SPLITS = ("train", "test")
MOTION_ORDERS = ("joint", "first", "last")       # when MaskGIT decodes a motionvq clip's motion tokens
MOVING_LABELS = ("class", "motion")               # what a moving Fashion-MNIST clip's label is
UCF101_FOLDS = (1, 2, 3)
PREDICTIONS = ("v", "eps", "x0")                  # what a diffusion network predicts
NOISE_SCHEDULES = ("shifted_cosine", "cosine")
DIFFUSION_SAMPLERS = ("ddim", "ddpm", "dpmpp2m")

# Sampling may loop at most this many times the trained Lmax (the paper: quality first improves a
# little beyond Lmax, then degrades far above it); a larger count is almost always a typo.
BEYOND_LMAX = 4

SCHEDULE_SYNTAX = ("an integer L (every step), a comma-separated list with one loop count per step, "
                   "ramp:A:B (linear from A to B loops across the steps) or split:A:B[:F] (A loops for the "
                   "first fraction F of the steps, default 0.5, then B)")


def one_of(values) -> str:
    """'a, b or c' for messages."""
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
