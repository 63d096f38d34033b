"""The masked-token network: a bidirectional looped transformer, in one of two layouts (`arch`):

- "bert" (MaskGIT's, hence the paper's): post-norm layers, LayerNorm on the summed embeddings, and
  BERT's MLM head tied to the token embeddings — dense → GELU → LayerNorm, logits = h·Eᵀ + b;
- "prenorm": pre-norm layers, a final LayerNorm and an untied linear head (GPT-2/DiT style).

Sequence = [class token] + T token embeddings (+ learned positions); the looped stack; one shared
head at every exit. Id `codebook_size` is [MASK]; class id `num_classes` is the null class used for
label dropout and guidance.

Images: one learned position per token. Video (a 3D token grid `grid` = (t, h, w), tokens
numbered time-major): spatio-temporal positions, factorised as a learned spatial position (shared
by every time step) plus a learned time position, so every (t, h, w) cell has its own sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import MASKED_ARCHS
from ..core.layers import Block, PostNormBlock, block_flops
from ..core.looped import LoopedModel, LoopedStack


class MaskedTransformer(LoopedModel):
    def __init__(
        self,
        codebook_size: int,
        num_tokens: int,
        num_classes: int,
        width: int = 128,
        heads: int = 4,
        unique_layers: int = 2,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        grid: tuple[int, ...] | None = None,
        arch: str = "prenorm",
    ):
        super().__init__()
        if arch not in MASKED_ARCHS:
            raise ValueError(f"unknown masked architecture {arch!r}; choose one of {MASKED_ARCHS}")
        self.arch = arch
        if grid is not None and len(grid) == 3 and grid[0] * grid[1] * grid[2] != num_tokens:
            raise ValueError(f"token grid {tuple(grid)} does not hold {num_tokens} tokens")
        self.codebook_size, self.num_tokens, self.num_classes = codebook_size, num_tokens, num_classes
        self.width, self.mlp_ratio = width, mlp_ratio
        self.mask_id = codebook_size
        self.null_class = num_classes
        self.token_emb = nn.Embedding(codebook_size + 1, width)
        self.class_emb = nn.Embedding(num_classes + 1, width)
        self.frames = grid[0] if grid is not None and len(grid) == 3 else 1  # token grid's time steps
        self.pos_emb = nn.Parameter(torch.zeros(1, num_tokens // self.frames + 1, width))  # class + (spatial) positions
        self.time_emb = nn.Parameter(torch.zeros(1, self.frames, 1, width)) if self.frames > 1 else None
        self.emb_drop = nn.Dropout(dropout)
        if arch == "bert":
            self.emb_norm = nn.LayerNorm(width, eps=1e-12)
            self.stack = LoopedStack(PostNormBlock(width, heads, mlp_ratio, dropout) for _ in range(unique_layers))
            self.dense = nn.Linear(width, width)  # the MLM head's transform; its decoder is token_emb
            self.norm = nn.LayerNorm(width, eps=1e-12)
            self.out_bias = nn.Parameter(torch.zeros(codebook_size))
        else:
            self.stack = LoopedStack(Block(width, heads, mlp_ratio, dropout) for _ in range(unique_layers))
            self.norm = nn.LayerNorm(width)
            self.out = nn.Linear(width, codebook_size)
        self.apply(_init)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        if self.time_emb is not None:
            nn.init.trunc_normal_(self.time_emb, std=0.02)

    def positions(self) -> torch.Tensor:
        """(1, 1 + T, D): the class position, then one per token."""
        if self.time_emb is None:
            return self.pos_emb
        space = (self.time_emb + self.pos_emb[:, None, 1:]).flatten(1, 2)  # (1, t·h·w, D), time-major
        return torch.cat([self.pos_emb[:, :1], space], dim=1)

    def embed(self, tokens: torch.Tensor, labels: torch.Tensor):
        """tokens (B, T) int64 with [MASK] = codebook_size; labels (B,) with null = num_classes."""
        h = torch.cat([self.class_emb(labels)[:, None], self.token_emb(tokens)], dim=1) + self.positions()
        if self.arch == "bert":
            h = self.emb_norm(h)
        return self.emb_drop(h), {}

    def head(self, h: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1+T, D) → logits (B, T, codebook_size); the class position is dropped. With `positions`
        (B, T) bool, only those positions are decoded: logits (M, codebook_size), M = positions.sum(),
        in row-major order (the training loss); with `positions` (B, n) int64 indices, those n positions
        of each row: logits (B, n, codebook_size) (the sampler). Nothing else is decoded."""
        h = h[:, 1:]
        if positions is not None and positions.dtype == torch.bool:
            h = h[positions]
        elif positions is not None:
            h = h.gather(1, positions[..., None].expand(-1, -1, h.shape[-1]))
        if self.arch == "bert":  # tied decoder: the code embeddings, without the [MASK] row
            return self.norm(F.gelu(self.dense(h))) @ self.token_emb.weight[:self.codebook_size].t() + self.out_bias
        return self.out(self.norm(h))

    def flops(self, loops: int, heads: int = 1) -> int:
        """Analytic forward FLOPs (matmuls; multiply-add = 2) of one sequence at `loops` loops with the
        head evaluated at `heads` exits (ILSD training: 2)."""
        seq = self.num_tokens + 1
        layers = len(self.stack.layers) * loops * block_flops(self.width, seq, self.mlp_ratio)
        head = 2 * self.num_tokens * self.width * (self.codebook_size + (self.width if self.arch == "bert" else 0))
        return layers + heads * head


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.trunc_normal_(m.weight, std=0.02)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
