"""Pretrained discrete tokenizers from local files, as TorchScript modules.

Any tokenizer (e.g. a MAGVIT 3D-VQ ported to PyTorch) exported with `torch.jit.script(m).save(path)`
plugs in when it has:
- `encode(x)`: images (B, C, H, W) or clips (B, C, T, H, W) in [0, 1] → token ids (B, num_tokens);
- `decode(ids)`: the inverse;
- attributes `codebook_size: int` and `grid: List[int]` (the token grid, e.g. [4, 16, 16]).
elt never trains it; a run records its path and SHA-256 (`tokenizer.path`, `tokenizer.sha256`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..utils.files import verify_file


class ScriptedTokenizer(nn.Module):
    learned = False  # fixed or pretrained: elt trains no weights of it

    def __init__(self, path: str, sha256: str | None = None):
        super().__init__()
        where = "set tokenizer.path to a TorchScript tokenizer file (see elt.tokenizers.pretrained)"
        file = verify_file(path, sha256, "pretrained tokenizer", where)
        try:
            self.module = torch.jit.load(str(file), map_location="cpu").eval()
        except RuntimeError as e:
            raise ValueError(f"pretrained tokenizer {file} is not a TorchScript file ({str(e).splitlines()[0]}); "
                             f"export it with torch.jit.script(model).save(path)") from None
        missing = [a for a in ("encode", "decode", "codebook_size", "grid") if not hasattr(self.module, a)]
        if missing:
            raise ValueError(f"pretrained tokenizer {file} lacks {', '.join(missing)}; it needs encode, decode, "
                             f"codebook_size and grid (see elt.tokenizers.pretrained)")
        self.codebook_size = int(self.module.codebook_size)
        self.grid = tuple(int(g) for g in self.module.grid)
        self.num_tokens = math.prod(self.grid)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.encode(x).long().view(x.shape[0], -1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.module.decode(ids).float().clamp(0, 1)
