"""The looped DiT denoiser (Peebles & Xie 2023; the paper's diffusion setting), read top to bottom like DiT's models.py.

Input latents (B, C, H, W) → p×p patches → tokens + fixed 2D sin-cos positions; conditioning
c = timestep embedding + class embedding (id `num_classes` is the null class used for label dropout
and guidance). The looped stack re-applies c through adaLN-Zero in every layer at every loop; the
final layer (adaLN LayerNorm + linear, zero-initialised) is the head shared by every exit.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from einops import rearrange
from torch import nn

from ..core.layers import AdaLNBlock, adaln_block_flops, modulate
from ..core.looped import LoopedModel, LoopedStack


class TimestepEmbedder(nn.Module):
    """t ∈ [0, 1] → sinusoidal features of 1000·t (DiT's frequencies) → MLP → (B, D)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal(t, self.freq_dim))


def sincos_pos_embed(width: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (MAE/DiT), (grid·grid, width), row-major."""
    if width % 4:
        raise ValueError(f"width {width} must be divisible by 4 for the 2D sin-cos position embedding")
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def embed(pos):
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([embed(ys), embed(xs)], axis=1)).float()


class FinalLayer(nn.Module):
    """adaLN LayerNorm + linear to p·p·C values per token; both modulation and linear start at zero."""

    def __init__(self, width: int, patch: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch * patch * channels)
        for layer in (self.ada[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))


class DiT(LoopedModel):
    def __init__(
        self,
        input_size: int,
        in_channels: int,
        num_classes: int,
        patch_size: int = 2,
        width: int = 128,
        heads: int = 4,
        unique_layers: int = 2,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by patch size {patch_size}; "
                             f"pick a patch size dividing it (or pad the images)")
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.null_class = num_classes, num_classes
        self.width, self.mlp_ratio = width, mlp_ratio
        self.grid = input_size // patch_size
        self.num_tokens = self.grid * self.grid
        self.x_embed = nn.Conv2d(in_channels, width, patch_size, patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed(width, self.grid)[None], persistent=False)
        self.t_embed = TimestepEmbedder(width)
        self.y_embed = nn.Embedding(num_classes + 1, width)
        self.stack = LoopedStack(AdaLNBlock(width, heads, mlp_ratio) for _ in range(unique_layers))
        self.final = FinalLayer(width, patch_size, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier linears, patch embedding as a linear, N(0, 0.02) embeddings;
        adaLN modulations and the final layer stay zero (set in their constructors)."""
        for block in self.stack.layers:
            for m in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for m in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor):
        """x (B, C, H, W) noisy latents, t (B,) in [0, 1], labels (B,) with null = num_classes."""
        h = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return h, {"c": self.t_embed(t) + self.y_embed(labels)}

    def head(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → prediction (B, C, H, W), un-patchified."""
        p = self.patch_size
        return rearrange(self.final(h, c), "b (gh gw) (p q c) -> b c (gh p) (gw q)", gh=self.grid, p=p, q=p)

    def flops(self, loops: int, heads: int = 1) -> int:
        """Analytic forward FLOPs (matmuls; multiply-add = 2) of one example at `loops` loops with the
        final layer at `heads` exits. Embeddings (patch, timestep, class) included once."""
        d, t, p, c = self.width, self.num_tokens, self.patch_size, self.in_channels
        layers = len(self.stack.layers) * loops * adaln_block_flops(d, t, self.mlp_ratio)
        final = 2 * d * 2 * d + 2 * t * d * p * p * c
        embed = 2 * t * p * p * c * d + 2 * (self.t_embed.freq_dim * d + d * d)
        return embed + layers + heads * final
