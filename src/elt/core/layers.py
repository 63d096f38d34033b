"""Transformer building blocks shared by every framework: SDPA attention, MLP, pre-norm and post-norm
(BERT) blocks, the adaLN-Zero block of DiT.

Shapes: tokens are (B, T, D) throughout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cpu_bf16(x: torch.Tensor) -> bool:
    """True when matmuls on x run in bf16 on the CPU (bf16 tensors, or bf16 autocast)."""
    if x.device.type != "cpu":
        return False
    return x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over (B, H, T, d). PyTorch SDPA, except in bf16 on the CPU, where its fused
    kernel is 3–5x slower than plain matmuls at these sequence lengths (fwd+bwd, T = 50–64, measured
    in benchmarks/README.md): there the scores are two matmuls with the softmax in fp32."""
    if not cpu_bf16(q):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    weights = F.dropout(scores.float().softmax(-1), dropout).to(scores.dtype)
    return weights @ v


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection and PyTorch SDPA (bidirectional)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}; pick heads dividing width")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exact (erf) GELU: on CPU it runs ~4x faster than the tanh approximation.
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer layer: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class PostNormBlock(nn.Module):
    """Post-norm (BERT) transformer layer: LN(x + attn(x)), then LN(x + mlp(x)). Every layer ends in a
    LayerNorm, so the stream a loop hands to the next keeps unit scale however often it is looped."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.attn = Attention(width, heads, dropout)
        self.norm1 = nn.LayerNorm(width, eps=1e-12)  # BERT's epsilon
        self.mlp = MLP(width, int(width * mlp_ratio), dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-12)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x)))
        return self.norm2(x + self.mlp(x))


def block_flops(width: int, tokens: int, mlp_ratio: float = 4.0) -> int:
    """Forward FLOPs (multiply-add = 2) of one `Block` or `PostNormBlock` on `tokens` tokens: projections,
    MLP, attention."""
    proj = 2 * tokens * width * (3 * width + width + 2 * int(width * mlp_ratio))
    attn = 2 * 2 * tokens * tokens * width  # QK^T and AV
    return proj + attn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift, with per-example (B, D) shift and scale broadcast over tokens."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class AdaLNBlock(nn.Module):
    """DiT block with adaLN-Zero (Peebles & Xie 2023): SiLU(c) → Linear(D, 6D) gives shift, scale and
    gate for the attention and the MLP branches. The modulation is zero-initialised, so every gate is
    0 and the block starts as the identity. `c` (B, D) is the conditioning (timestep + class)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


def adaln_block_flops(width: int, tokens: int, mlp_ratio: float = 4.0) -> int:
    """`block_flops` plus the per-example modulation Linear(D, 6D)."""
    return block_flops(width, tokens, mlp_ratio) + 2 * width * 6 * width
