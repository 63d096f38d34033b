"""A small convolutional VQ-VAE (van den Oord et al. 2017) trained by elt.

Encoder: `downsample_stages` stride-2 4×4 convs (28×28 → 7×7 with 2), a 3×3 conv, a 1×1 conv to
`latent_dim`. Quantiser: nearest codebook vector, codebook updated by exponential moving averages
(VQ-VAE-2) with dead codes restarted from encoder outputs, commitment weight β, straight-through
gradients. Decoder mirrors the encoder with transposed convs.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.dim, self.decay, self.eps = codebook_size, dim, decay, eps
        self.register_buffer("codebook", torch.randn(codebook_size, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (M, D) → ids (M,) of the nearest codebook vectors (squared L2)."""
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        return d.argmin(1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, ids: torch.Tensor, generator: torch.Generator | None = None) -> None:
        onehot = F.one_hot(ids, self.codebook_size).type_as(z)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
        n = self.ema_count.sum()
        count = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.ema_sum / count[:, None])
        dead = self.ema_count < 1e-2  # restart codes nobody uses from random encoder outputs
        if dead.any():
            pick = torch.randint(0, z.shape[0], (int(dead.sum()),), generator=generator)
            self.codebook[dead] = z[pick]
            self.ema_sum[dead] = z[pick]
            self.ema_count[dead] = 1.0


def conv_encoder(channels: int, hidden: int, out: int, stages: int) -> nn.Sequential:
    """`stages` stride-2 4×4 convs, a 3×3 conv, a 1×1 conv to `out` channels (VQ-VAE and KL-VAE)."""
    layers, c = [], channels
    for i in range(stages):
        width = hidden // 2 if i == 0 and stages > 1 else hidden
        layers += [nn.Conv2d(c, width, 4, 2, 1), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.Conv2d(c, hidden, 3, 1, 1), nn.ReLU(), nn.Conv2d(hidden, out, 1))


def conv_decoder(latent: int, hidden: int, channels: int, stages: int) -> nn.Sequential:
    """The mirror of `conv_encoder`: a 3×3 conv, then `stages` stride-2 transposed convs."""
    layers, c = [nn.Conv2d(latent, hidden, 3, 1, 1), nn.ReLU()], hidden
    for i in range(stages):
        last = i == stages - 1
        width = channels if last else (hidden // 2 if i == stages - 2 else hidden)
        layers += [nn.ConvTranspose2d(c, width, 4, 2, 1)] + ([] if last else [nn.ReLU()])
        c = width
    return nn.Sequential(*layers)


class VQVAE(nn.Module):
    def __init__(self, image_size: int = 28, channels: int = 1, codebook_size: int = 512, latent_dim: int = 16,
                 hidden: int = 64, downsample_stages: int = 2, beta: float = 0.25):
        super().__init__()
        if image_size % (2 ** downsample_stages):
            raise ValueError(f"image size {image_size} is not divisible by 2^{downsample_stages}")
        self.image_size, self.channels, self.beta = image_size, channels, beta
        self.codebook_size = codebook_size
        self.grid = image_size // 2 ** downsample_stages
        self.num_tokens = self.grid * self.grid
        self.encoder = conv_encoder(channels, hidden, latent_dim, downsample_stages)
        self.decoder = conv_decoder(latent_dim, hidden, channels, downsample_stages)
        self.quantizer = VectorQuantizer(codebook_size, latent_dim)

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images * 2 - 1).float()  # (B, D, h, w); the quantiser always works in fp32
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1] → ids (B, h·w), row-major."""
        return self.quantizer.nearest(self._latents(images)).view(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h·w) → images (B, C, H, W) in [0, 1]."""
        z = self.quantizer.codebook[ids].view(ids.shape[0], self.grid, self.grid, -1).permute(0, 3, 1, 2)
        return ((self.decoder(z) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def prepare(self, data: torch.Tensor, generator: torch.Generator) -> None:
        """k-means++-free init: random encoder outputs as the first codebook."""
        z = self._latents(data[torch.randperm(len(data), generator=generator)[:2048]])
        pick = torch.randint(0, z.shape[0], (self.codebook_size,), generator=generator)
        self.quantizer.codebook.copy_(z[pick])
        self.quantizer.ema_sum.copy_(z[pick])

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None):
        b = images.shape[0]
        z = self._latents(images)
        ids = self.quantizer.nearest(z.detach())
        q = self.quantizer.codebook[ids]
        if self.training:
            self.quantizer.update(z.detach(), ids, generator)
        commit = F.mse_loss(z, q)
        zq = (z + (q - z).detach()).view(b, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        recon = F.mse_loss(self.decoder(zq).float(), images * 2 - 1)
        return recon + self.beta * commit, recon


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) → float (N, C, H, W) in [0, 1]."""
    t = torch.as_tensor(np.array(images, copy=True)) if isinstance(images, np.ndarray) else images
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def train_autoencoder(model: nn.Module, images: np.ndarray, steps: int, batch_size: int = 128, lr: float = 2e-3,
                      seed: int = 0, progress: bool = True, bf16: bool = False, desc: str = "tokenizer"):
    """Adam with cosine decay on uint8 images (N, H, W, C) for any model with `loss(batch, generator)`
    → (loss, reconstruction MSE) and optionally `prepare(data, generator)` (run once first) and
    `finish(data)` (after training). `bf16`: convolutions under bf16 autocast."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = to_float(images)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    if hasattr(model, "prepare"):
        model.prepare(data, g)
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch = data[torch.randint(0, len(data), (batch_size,), generator=g)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, recon = model.loss(batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(recon_mse=f"{recon.item():.4f}")
    model.eval()
    if hasattr(model, "finish"):
        model.finish(data)
    return model


def train_vqvae(model: VQVAE, images: np.ndarray, steps: int, batch_size: int = 128, lr: float = 2e-3,
                seed: int = 0, progress: bool = True, bf16: bool = False) -> VQVAE:
    """Train on uint8 images (N, H, W, C); the quantiser always runs in fp32."""
    return train_autoencoder(model, images, steps, batch_size, lr, seed, progress, bf16, "tokenizer (VQ-VAE)")


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([fn(x[i: i + batch_size]) for i in range(0, len(x), batch_size)])
