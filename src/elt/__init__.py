"""elt — Elastic Looped Transformers: N unique layers looped L times, trained with Intra-Loop Self
Distillation so one checkpoint samples well at any loop count."""
from .ilsd import ILSD
from .looped import LoopedModel, LoopedStack
from .loops import LoopSchedule

__version__ = "0.1.0"
__all__ = ["ILSD", "LoopedModel", "LoopedStack", "LoopSchedule", "__version__"]
