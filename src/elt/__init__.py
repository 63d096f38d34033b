"""elt — Elastic Looped Transformers: N unique layers looped L times, trained with Intra-Loop Self
Distillation so one checkpoint samples well at any loop count.

Layers, bottom to top (docs/architecture.md): `choices` and `utils` (leaves) → `core` (the looped stack,
ILSD, layers, loop policies) → the frameworks (`masked`, `diffusion`), `tokenizers`, `data`, `metrics` →
`config` → `presets` → `engine` → `apps` (the `elt` command, the web demo, the benchmark).
The core's names are importable from here; nothing is imported until used (`elt --help` stays fast).
"""
from __future__ import annotations

__version__ = "0.1.0"
_CORE = {"ILSD": "ilsd", "LoopedModel": "looped", "LoopedStack": "looped", "LoopSchedule": "loops",
         "AdaptiveLoops": "loops"}
__all__ = [*_CORE, "__version__"]


def __getattr__(name: str):
    if name in _CORE:
        import importlib

        return getattr(importlib.import_module(f".core.{_CORE[name]}", __name__), name)
    raise AttributeError(f"module 'elt' has no attribute {name!r}")
