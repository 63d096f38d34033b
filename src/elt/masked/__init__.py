"""Masked-token generation (MaskGIT-style): network, training mask and losses, decoding sampler."""
from .framework import MaskedFramework, cosine_mask_ratio
from .model import MaskedTransformer
from .sampler import MaskGITSampler

__all__ = ["MaskedFramework", "MaskedTransformer", "MaskGITSampler", "cosine_mask_ratio"]
