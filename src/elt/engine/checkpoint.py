"""Tensors on disk: safetensors weights, numpy arrays and training checkpoints, each written through the
atomic writer (a crash never leaves a partial file) and loaded with one clear error naming the file and
the fix. Weights are safetensors (no pickled code runs on load); the optimizer state goes through
`torch.load(weights_only=True)`; step and RNG are JSON. A checkpoint is written to a temporary folder,
then renamed, so a crash never leaves a half-written `last`."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..utils.atomic import atomic_path
from .devices import like, optimizer_state_like


# ---------------------------------------------------------------------------------- tensors and arrays


def load_weights(module: torch.nn.Module, path: Path, what: str,
                 fix: str = "it is a cache entry: delete it and elt builds it again", layout=None, mismatch: str | None = None) -> None:
    """Load a safetensors file into `module`; `layout(state)` may first re-shard it (FSDP2). An unreadable
    file gets `fix`; a readable one whose tensors do not fit the module gets `mismatch` (default `fix`)."""
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{what} file {path} is unreadable ({e}); {fix}") from None
    try:
        module.load_state_dict(layout(state) if layout is not None else state)
    except RuntimeError as e:
        raise ValueError(f"{what} file {path} does not match its config ({str(e).splitlines()[0]}); "
                         f"{mismatch or fix}") from None


def save_tensors(tensors: dict, path: Path) -> None:
    """safetensors, written to a temporary file and renamed: a crash never leaves a partial file."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def save_arrays(path: Path, array: np.ndarray | None = None, **arrays) -> None:
    """One array as .npy, or named arrays as .npz, written to a temporary file and renamed."""
    with atomic_path(path) as tmp:
        np.save(tmp, array) if array is not None else np.savez(tmp, **arrays)


def claim_manifest(path: Path, manifest: dict, same, refusal: str) -> None:
    """A resumable folder's manifest.json: written when missing; when present, `same(old, new)` (both as
    JSON reads them) must hold, else ValueError(`refusal`) — a folder is never completed with other settings."""
    path = Path(path)
    new = json.loads(json.dumps(manifest))
    if path.is_file():
        if not same(json.loads(path.read_text()), new):
            raise ValueError(refusal)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


def hash_weights(module: torch.nn.Module, h=None):
    """`h` (a new SHA-1 when None) updated with every tensor of the module's state, by name."""
    h = hashlib.sha1() if h is None else h
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h


def save_weights(module: torch.nn.Module, path: Path) -> None:
    save_tensors(module.state_dict(), path)


# ---------------------------------------------------------------------------------- checkpoints


def damaged(checkpoint: Path) -> str:
    """The fix for a damaged checkpoint folder: the run's newest kept copy when it has one, else what it can do
    without one (nothing is deleted either way)."""
    folder = Path(checkpoint).parent
    kept = sorted(p.name for p in folder.glob("step_*") if p.is_dir() and p != Path(checkpoint))
    if kept:
        return (f"the checkpoint is damaged: move {Path(checkpoint).name} aside and copy the kept {folder.name}/"
                f"{kept[-1]} in its place (nothing is deleted)")
    return ("the checkpoint is damaged and the run keeps no step_N copies (train.keep_every=0): restore it from a "
            "backup, or train the run again (nothing is deleted)")


# A checkpoint that reads but does not fit the network its config.yaml builds: the config was edited.
EDITED = ("the run's config.yaml builds another network than the one trained (was config.yaml edited?); restore "
          "its model and tokenizer values — the checkpoint itself is fine")


def ckpt_dir(run: Path) -> Path:
    return Path(run) / "checkpoints" / "last"


def find_checkpoint(run: Path) -> Path | None:
    last = ckpt_dir(run)
    for candidate in (last, last.with_name("last.old")):  # .old survives a crash between the renames
        if (candidate / "state.json").is_file():
            return candidate
    return None


def _tensors(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


CHECKPOINT_CONFIG = "config.yaml"  # the config the checkpoint was trained with (a resume is checked against it)


def save_checkpoint(run: Path, model_state: dict, ema_state: dict | None, optim_state: dict, step: int,
                    generator: torch.Generator, config_text: str = "") -> Path:
    """Write full (unsharded) states and the config they were trained with; see `devices.full_state` for FSDP
    runs. A failed write (a full disk) leaves the previous checkpoint as it was and no temporary folder behind."""
    final = ckpt_dir(run)
    tmp = final.with_name(f"last.tmp{os.getpid()}")
    for stale in final.parent.glob("last.tmp*"):  # ours, or left by a process that was killed
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(_tensors(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(_tensors(ema_state), str(tmp / "ema.safetensors"))
        torch.save(optim_state, tmp / "optimizer.pt")
        if config_text:
            (tmp / CHECKPOINT_CONFIG).write_text(config_text)
        (tmp / "state.json").write_text(json.dumps({
            "step": step,
            "generator": generator.get_state().tolist(),
            "torch_rng": torch.get_rng_state().tolist(),
        }))
    except Exception as e:  # safetensors and torch.save report a full disk with their own error types
        shutil.rmtree(tmp, ignore_errors=True)
        previous = find_checkpoint(run)
        kept = f"the checkpoint of step {read_state(previous)['step']} is intact" if previous else "no checkpoint yet"
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        raise OSError(f"could not write the checkpoint of step {step} to {final.parent} ({reason}); {kept}; free "
                      f"space and continue with --resume") from None
    old = final.with_name("last.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict:
    try:
        state = json.loads((path / "state.json").read_text())
        int(state["step"])
        return state
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint file {path / 'state.json'} is unreadable ({e}); {damaged(path)}") from None


def keep_copy(run: Path, step: int) -> Path:
    """Copy `last` to checkpoints/step_NNNNNNN (periodic keeps survive the rolling `last`)."""
    dest = Path(run) / "checkpoints" / f"step_{step:07d}"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt_dir(run), tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def load_checkpoint(path: Path, model, ema=None, optimizer=None, generator: torch.Generator | None = None) -> int:
    """Restore into the given objects; return the step. Errors name the file and the fix."""
    state = read_state(path)
    step = int(state["step"])
    load_weights(model, path / "model.safetensors", "checkpoint", damaged(path), lambda s: like(s, model.state_dict()),
                 EDITED)
    if ema is not None:
        load_weights(ema, path / "ema.safetensors", "checkpoint EMA", damaged(path), mismatch=EDITED)
    if optimizer is not None:
        try:
            full = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            optimizer.load_state_dict(optimizer_state_like(full, optimizer))
        except Exception as e:  # torch's own message is lines of advice about torch.load; its type says enough
            raise ValueError(f"checkpoint file {path / 'optimizer.pt'} is unreadable ({type(e).__name__}); "
                             f"{damaged(path)}") from None
    if generator is not None:
        generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return step
