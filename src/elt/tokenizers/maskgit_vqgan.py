"""MaskGIT's VQGAN tokenizer (Chang et al. 2022) in PyTorch, loaded from a user-given checkpoint.

The network is MaskGIT's JAX VQGAN (`maskgit/nets/vqgan_tokenizer.py`) as open-muse ported it to
PyTorch (`muse/modeling_maskgit_vqgan.py`), whose state-dict names this module keeps, so its
converted ImageNet checkpoint (e.g. `openMUSE/maskgit-vqgan-imagenet-f16-256`) loads as is: no
attention layers; residual blocks of GroupNorm(32) → SiLU → 3×3 conv (no bias) twice, the 1×1
shortcut applied to the block's *output* where the width changes (a quirk of the original, kept);
average-pool downsampling and nearest-neighbour + conv upsampling; channel multipliers (1, 1, 2, 2, 4)
of 128, two blocks per level, 256-d latents, 1024 codes of 256 dims → 16×16 tokens for 256×256
images in [0, 1]. "SAME" padding of stride-1 odd kernels is symmetric, so plain padded convs match.

The architecture is read off the checkpoint's shapes, so a small randomly initialised copy (the
tests') loads through the same path as the real file.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.files import verify_file

WHERE = ("convert MaskGIT's ImageNet VQGAN checkpoint to PyTorch (open-muse's maskgit-vqgan-imagenet-f16-256 "
         "holds one) and set tokenizer.path to the .safetensors/.bin/.pth file")


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.changes = cin != cout
        self.norm1, self.conv1 = _norm(cin), _conv(cin, cout, 3, bias=False)
        self.norm2, self.conv2 = _norm(cout), _conv(cout, cout, 3, bias=False)
        if self.changes:
            self.nin_shortcut = _conv(cout, cout, 1, bias=False)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(h) if self.changes else x)


class Level(nn.Module):
    """`num_res_blocks` blocks, then (encoder) a 2× average pool or (decoder) 2× nearest + conv."""

    def __init__(self, cin: int, cout: int, blocks: int, down: bool = False, up: bool = False):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout) for i in range(blocks)])
        self.down, self.up = down, up
        if up:
            self.upsample_conv = _conv(cout, cout, 3)

    def forward(self, x):
        for b in self.block:
            x = b(x)
        if self.down:
            x = F.avg_pool2d(x, 2, 2)
        if self.up:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class Encoder(nn.Module):
    def __init__(self, channels: int, hidden: int, mult: tuple, blocks: int, z: int):
        super().__init__()
        self.conv_in = _conv(channels, hidden, 3, bias=False)
        ins = (1,) + tuple(mult)
        self.down = nn.ModuleList([Level(hidden * ins[i], hidden * m, blocks, down=i < len(mult) - 1)
                                   for i, m in enumerate(mult)])
        top = hidden * mult[-1]
        self.mid = nn.ModuleList([ResnetBlock(top, top) for _ in range(blocks)])
        self.norm_out, self.conv_out = _norm(top), _conv(top, z, 1)

    def forward(self, x):
        x = self.conv_in(x)
        for m in (*self.down, *self.mid):
            x = m(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, channels: int, hidden: int, mult: tuple, blocks: int, z: int):
        super().__init__()
        top = hidden * mult[-1]
        self.conv_in = _conv(z, top, 3)
        self.mid = nn.ModuleList([ResnetBlock(top, top) for _ in range(blocks)])
        # up[i] works at level i; run from the coarsest (last) to the finest (up[0], no upsampling)
        self.up = nn.ModuleList([Level(hidden * (mult[i + 1] if i < len(mult) - 1 else mult[-1]), hidden * m, blocks,
                                       up=i > 0) for i, m in enumerate(mult)])
        self.norm_out, self.conv_out = _norm(hidden * mult[0]), _conv(hidden * mult[0], channels, 3)

    def forward(self, x):
        x = self.conv_in(x)
        for m in (*self.mid, *reversed(self.up)):
            x = m(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Codebook(nn.Module):
    def __init__(self, n: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n, dim)


class MaskGITVQGAN(nn.Module):
    """encode: images (B, 3, H, W) in [0, 1] → ids (B, (H/16)·(W/16)) row-major; decode: the inverse."""
    learned = False  # fixed or pretrained: elt trains no weights of it

    def __init__(self, image_size: int = 256, channels: int = 3, hidden: int = 128, mult: tuple = (1, 1, 2, 2, 4),
                 blocks: int = 2, z: int = 256, codebook_size: int = 1024):
        super().__init__()
        factor = 2 ** (len(mult) - 1)
        if image_size % factor:
            raise ValueError(f"image size {image_size} is not divisible by the VQGAN's downsampling {factor}")
        self.encoder = Encoder(channels, hidden, mult, blocks, z)
        self.decoder = Decoder(channels, hidden, mult, blocks, z)
        self.quantize = Codebook(codebook_size, z)
        self.codebook_size, side = codebook_size, image_size // factor
        self.grid, self.num_tokens = (side, side), side * side

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images.float()).permute(0, 2, 3, 1)
        flat = z.reshape(-1, z.shape[-1])
        e = self.quantize.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        return d.argmin(1).view(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        b = ids.shape[0]
        z = self.quantize.embedding(ids).view(b, *self.grid, -1).permute(0, 3, 1, 2)
        return self.decoder(z).clamp(0, 1)

    @classmethod
    def from_file(cls, path: str, sha256: str | None = None, image_size: int = 256) -> MaskGITVQGAN:
        """Loads a checkpoint (safetensors, or a torch state dict), reading the architecture off its shapes."""
        file = verify_file(path, sha256, "MaskGIT VQGAN checkpoint", WHERE)
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(file))
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
                state = state.get("state_dict", state) if isinstance(state, dict) else state
            model = cls(image_size, **architecture(state))
            model.load_state_dict(state)
        except Exception as e:  # unreadable file, missing keys, shape mismatches
            raise ValueError(f"{file} is not a MaskGIT VQGAN checkpoint ({str(e).splitlines()[0][:200]}); {WHERE}") from None
        return model.eval()


def architecture(state: dict) -> dict:
    """channels, hidden, mult, blocks, z, codebook_size of a checkpoint, from its tensor shapes."""
    hidden, channels = state["encoder.conv_in.weight"].shape[:2]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    mult = tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // hidden for i in levels)
    n, z = state["quantize.embedding.weight"].shape
    return {"channels": int(channels), "hidden": int(hidden), "mult": mult, "blocks": blocks, "z": int(z),
            "codebook_size": int(n)}
