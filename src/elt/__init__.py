"""elt — Elastic Looped Transformers: N unique layers looped L times, trained with Intra-Loop Self
Distillation so one checkpoint samples well at any loop count.

Layers, bottom to top (docs/architecture.md): `choices` and `utils` (leaves) → `core` (the looped stack,
ILSD, layers, loop policies) → the frameworks (`masked`, `diffusion`), `tokenizers`, `data`, `metrics` →
`config` → `presets` → `engine` → `apps` (the `elt` command, the web demo, the benchmark).
The Python API (`elt.load(...)` → `ElasticModel`, docs/python.md) and the core's names are importable from
here; nothing is imported until used (`elt --help` stays fast).

    import elt
    model = elt.load("runs/demo")            # a run folder, an exported folder, or a Hub id "org/name"
    images = model.generate(classes=[0, 3, 7], loops=4, seed=0)
"""
from __future__ import annotations

__version__ = "0.1.0"
_LAZY = {"load": "apps.model", "ElasticModel": "apps.model", "ILSD": "core.ilsd", "LoopedModel": "core.looped",
         "LoopedStack": "core.looped", "LoopSchedule": "core.loops", "AdaptiveLoops": "core.loops"}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'elt' has no attribute {name!r}")
