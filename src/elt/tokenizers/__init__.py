"""Tokenizers turn images (float (B, C, H, W) in [0, 1]) into token ids (B, T) and back."""
from .pixel import PixelTokenizer
from .vqvae import VQVAE, train_vqvae

__all__ = ["PixelTokenizer", "VQVAE", "train_vqvae"]
