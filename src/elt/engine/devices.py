"""Devices: the process group `torchrun` starts, the device each rank runs on, its precision and its
memory — everything elt asks of the hardware.

One CPU process and `torchrun --nproc_per_node=K $(which elt) train ...` run the same code: with
WORLD_SIZE > 1 the process group starts (NCCL on CUDA, gloo on CPU) and the model is wrapped in DDP
(or sharded with FSDP2 `fully_shard` when `train.parallel=fsdp`).

Every rank draws the same global batch from the same generator and keeps its own slice, so data
order, masks, label dropout and Lint do not depend on the number of processes; losses are
weighted by each slice's share of the global batch, so gradients equal the single-process ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group torchrun started; (0, 1) in one process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda was asked for (--device or train.device) but no CUDA GPU is visible here; "
                             "use cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def teardown(finished: bool = False) -> None:
    """End the process group, if one runs. `finished`: every rank got here normally, so wait for all
    of them first (gloo aborts a rank whose peer closes its connections early); after an error, leave
    at once instead of waiting."""
    if dist.is_available() and dist.is_initialized():
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def like(full: dict, reference: dict) -> dict:
    """Full tensors laid out like `reference`'s: sharded where it holds FSDP2 DTensors (every rank
    holds the full tensor; each keeps its shard), unchanged elsewhere. The inverse of `full_state`."""
    out = {}
    for k, v in full.items():
        ref = reference.get(k)
        if isinstance(v, torch.Tensor) and hasattr(ref, "device_mesh") and v.shape == ref.shape:
            from torch.distributed.tensor import distribute_tensor
            v = distribute_tensor(v.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
        out[k] = v
    return out


def optimizer_state_like(full: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A full optimizer state (as saved) with each parameter's moments sharded like the parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {i: like(s, {k: params[int(i)] for k in s}) for i, s in full["state"].items()}
    return {**full, "state": state}


def full_state(obj):
    """Replace sharded DTensors (FSDP2) in a nested state by full tensors. A collective under FSDP:
    call it on every rank, in the same order."""
    if isinstance(obj, dict):
        return {k: full_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_state(v) for v in obj)
    if hasattr(obj, "full_tensor"):
        return obj.full_tensor()
    return obj


# ---------------------------------------------------------------------------------- precision


def native_bf16(device: torch.device) -> bool:
    """True on CUDA GPUs with bf16 and on CPUs with AVX512-BF16 or AMX; elsewhere bf16 is emulated
    and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`fp32`, `bf16` (autocast) or `auto` (bf16 where the hardware computes it natively) → fp32 | bf16."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")


# ---------------------------------------------------------------------------------- memory


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


def check_fits(params: int, device: torch.device, what: str, fix: str) -> None:
    """Before any work: one clear error when a network of `params` parameters (`what` says which) is too
    large to train on `device`. Training holds about 20 bytes a parameter (fp32 weights, gradients, EMA
    and AdamW's two moments)."""
    need, free = 20 * params, available_memory(device)
    if free is not None and need > free:
        raise ValueError(f"{what} is {params / 1e6:,.0f}M parameters, about {need / 2**30:,.1f} GiB to train; "
                         f"{device.type} has {free / 2**30:,.1f} GiB free: {fix}")
