"""The looped core, framework-agnostic: transformer layers, the looped stack (N unique layers applied
L times, with exits), the ILSD objective, and loop policies for sampling. Nothing here knows about
tokens, pixels or noise."""
from .ilsd import ILSD
from .looped import LoopedModel, LoopedStack, check_loops
from .loops import AdaptiveLoops, LoopSchedule

__all__ = ["ILSD", "LoopedModel", "LoopedStack", "LoopSchedule", "AdaptiveLoops", "check_loops"]
