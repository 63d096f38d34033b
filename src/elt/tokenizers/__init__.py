"""Tokenizers and codecs. Discrete (masked framework): images (B, C, H, W) or clips (B, C, T, H, W)
in [0, 1] → token ids (B, T) and back. Continuous (diffusion framework): images → latents (B, c, h, w) and back.
Every tokenizer says whether elt trains its weights (`learned`: the VQ-VAEs and the KL-VAE) or not (pixel
levels, pixel space, and pretrained codecs from local files)."""
from .continuous import KLVAE, DiffusersVAE, PixelSpace, train_klvae
from .pixel import PixelTokenizer
from .pretrained import ScriptedTokenizer
from .vqvae import VQVAE, train_autoencoder, train_vqvae

__all__ = ["PixelTokenizer", "VQVAE", "train_vqvae", "PixelSpace", "KLVAE", "train_klvae", "DiffusersVAE",
           "train_autoencoder", "ScriptedTokenizer"]
