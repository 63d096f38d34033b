"""Pixel-level tokenizer: every pixel intensity is quantised to one of `levels` ids (8×8 digits: 17)."""
from __future__ import annotations

import torch
from torch import nn


class PixelTokenizer(nn.Module):
    learned = False  # fixed or pretrained: elt trains no weights of it

    def __init__(self, image_size: int, channels: int = 1, levels: int = 17):
        super().__init__()
        self.image_size, self.channels, self.levels = image_size, channels, levels
        self.codebook_size = levels
        self.num_tokens = image_size * image_size * channels

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        ids = torch.round(images.clamp(0, 1) * (self.levels - 1)).long()
        return ids.permute(0, 2, 3, 1).reshape(images.shape[0], -1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        s, c = self.image_size, self.channels
        return (ids.float() / (self.levels - 1)).reshape(-1, s, s, c).permute(0, 3, 1, 2)
