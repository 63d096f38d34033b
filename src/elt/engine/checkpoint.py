"""Checkpoints: weights in safetensors (no pickled code runs on load), optimizer state through
`torch.load(weights_only=True)`, step and RNG in JSON. Written to a temporary folder, then renamed,
so a crash never leaves a half-written `last`."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .store import load_weights
from .distributed import like, optimizer_state_like


DAMAGED = ("the checkpoint is damaged: move checkpoints/last aside and copy a kept checkpoints/step_N in its "
           "place (nothing is deleted)")
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


def save_checkpoint(run: Path, model_state: dict, ema_state: dict | None, optim_state: dict, step: int,
                    generator: torch.Generator) -> Path:
    """Write full (unsharded) states; see `distributed.full_state` for FSDP runs. A failed write (a full
    disk) leaves the previous checkpoint as it was and no temporary folder behind."""
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
        raise ValueError(f"checkpoint file {path / 'state.json'} is unreadable ({e}); {DAMAGED}") from None


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
    load_weights(model, path / "model.safetensors", "checkpoint", DAMAGED, lambda s: like(s, model.state_dict()),
                 EDITED)
    if ema is not None:
        load_weights(ema, path / "ema.safetensors", "checkpoint EMA", DAMAGED, mismatch=EDITED)
    if optimizer is not None:
        try:
            full = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            optimizer.load_state_dict(optimizer_state_like(full, optimizer))
        except Exception as e:  # torch's own message is lines of advice about torch.load; its type says enough
            raise ValueError(f"checkpoint file {path / 'optimizer.pt'} is unreadable ({type(e).__name__}); "
                             f"{DAMAGED}") from None
    if generator is not None:
        generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return step
