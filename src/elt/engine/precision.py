"""Mixed precision: `fp32`, `bf16` (autocast) or `auto` (bf16 where the hardware computes it natively)."""
from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """True on CUDA GPUs with bf16 and on CPUs with AVX512-BF16 or AMX; elsewhere bf16 is emulated
    and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve(precision, device) == "bf16")
