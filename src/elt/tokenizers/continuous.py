"""Continuous image codecs for diffusion: images (B, C, H, W) in [0, 1] ↔ latents (B, c, h, w).

Every codec has `latent_shape` (c, h, w), `encode` and `decode`:
- `PixelSpace`: pixels scaled to [-1, 1], zero-padded to `pad_to` (28×28 → 32×32 so patch 4 tiles it);
- `KLVAE`: a small convolutional VAE with a KL-regularised Gaussian latent (the SD VAE's recipe at toy
  scale), trained by elt; latents are the posterior mean times a scale measured after training
  (1/std of the training latents, as SD's 0.18215), so the diffusion model sees unit variance;
- `DiffusersVAE`: diffusers' `AutoencoderKL` loaded from a local directory (e.g. the SD v1.4 VAE of
  the ImageNet presets), scaled by its config's `scaling_factor`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.arrays import to_float
from .vqvae import conv_decoder, conv_encoder, train_autoencoder


class PixelSpace(nn.Module):
    learned = False  # fixed or pretrained: elt trains no weights of it

    def __init__(self, image_size: int, channels: int = 1, pad_to: int | None = None):
        super().__init__()
        pad_to = pad_to or image_size
        if pad_to < image_size:
            raise ValueError(f"tokenizer.pad_to {pad_to} is smaller than the images ({image_size}); "
                             f"use at least {image_size}")
        self.image_size, self.channels, self.pad_to = image_size, channels, pad_to
        self.before = (pad_to - image_size) // 2
        self.latent_shape = (channels, pad_to, pad_to)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        a, b = self.before, self.pad_to - self.image_size - self.before
        return F.pad(images * 2 - 1, (a, b, a, b), value=-1.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        a, s = self.before, self.image_size
        return ((latents[:, :, a:a + s, a:a + s] + 1) / 2).clamp(0, 1)


class KLVAE(nn.Module):
    learned = True  # elt trains its weights (and a run folder keeps them)

    def __init__(self, image_size: int = 28, channels: int = 1, latent_dim: int = 4, hidden: int = 64,
                 downsample_stages: int = 2, kl_weight: float = 1e-4):
        super().__init__()
        if image_size % (2 ** downsample_stages):
            raise ValueError(f"image size {image_size} is not divisible by 2^{downsample_stages}")
        self.image_size, self.channels, self.kl_weight = image_size, channels, kl_weight
        grid = image_size // 2 ** downsample_stages
        self.latent_shape = (latent_dim, grid, grid)
        self.encoder = conv_encoder(channels, hidden, 2 * latent_dim, downsample_stages)
        self.decoder = conv_decoder(latent_dim, hidden, channels, downsample_stages)
        self.register_buffer("scale", torch.ones(()))

    def posterior(self, images: torch.Tensor):
        mean, logvar = self.encoder(images * 2 - 1).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.posterior(images)[0] * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.decoder(latents / self.scale) + 1) / 2).clamp(0, 1)

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None):
        mean, logvar = self.posterior(images)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)  # the CPU generator on any device
        z = mean + (0.5 * logvar).exp() * noise
        recon = F.mse_loss(self.decoder(z).float(), images * 2 - 1)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean() / images[0].numel()
        return recon + self.kl_weight * kl, recon

    @torch.no_grad()
    def finish(self, data: torch.Tensor) -> None:
        """Measure the latent scale: 1/std of the posterior means of (up to) 4096 training images
        (`data`: the uint8 set)."""
        self.scale.fill_(1.0)
        std = torch.cat([self.posterior(to_float(data[i: i + 1024]))[0]
                         for i in range(0, min(len(data), 4096), 1024)]).std()
        self.scale.fill_(1.0 / max(float(std), 1e-6))


def train_klvae(model: KLVAE, images, steps: int, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                progress: bool = True, bf16: bool = False, device: str | torch.device | None = None) -> KLVAE:
    return train_autoencoder(model, images, steps, batch_size, lr, seed, progress, bf16, "tokenizer (KL-VAE)", device)


class DiffusersVAE(nn.Module):
    """diffusers' AutoencoderKL as a codec (optional extra `elt[diffusers]`). Give a local directory
    holding its config.json and weights, or an already built `AutoencoderKL` (tests)."""
    learned = False  # fixed or pretrained: elt trains no weights of it

    def __init__(self, vae_or_path, image_size: int, channels: int = 3):
        super().__init__()
        if isinstance(vae_or_path, nn.Module):
            vae = vae_or_path
        else:
            vae = load_autoencoder_kl(vae_or_path)
        self.vae = vae.eval().requires_grad_(False)
        self.image_size, self.channels = image_size, channels
        self.factor = float(vae.config.scaling_factor)
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        if image_size % down:
            raise ValueError(f"image size {image_size} is not divisible by the VAE's downsampling {down}")
        self.latent_shape = (vae.config.latent_channels, image_size // down, image_size // down)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images * 2 - 1).latent_dist.mean * self.factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(latents / self.factor).sample + 1) / 2).clamp(0, 1)


def load_autoencoder_kl(path):
    from pathlib import Path

    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ImportError("tokenizer.kind=diffusers_vae needs diffusers; pip install 'elt[diffusers]'") from None
    path = Path(path) if path else None
    if path is None or not (path / "config.json").is_file():
        raise FileNotFoundError(f"tokenizer.path {path} is not a diffusers AutoencoderKL folder (no config.json); "
                                f"point it at a local copy of the VAE, e.g. the 'vae' folder of "
                                f"CompVis/stable-diffusion-v1-4")
    try:
        return AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"could not load the AutoencoderKL in {path} ({str(e).splitlines()[0]}); "
                         f"check its config.json and weights files") from None
