"""A first-frame + motion video tokenizer (MAGVIT-v2's causal idea taken to a codec's I-frame and
motion vectors), trained by elt.

Clips (B, C, T, H, W) become two kinds of tokens from one codebook:
- **appearance**: the first frame alone, through a 2D conv encoder (the image VQ-VAE's), h×w tokens
  (H/2^stages per side), row-major;
- **motion**: `motion_tokens` tokens for the whole clip, from a 3D conv encoder that sees every frame
  (the first one included), pooled over space and time.
The decoder draws the first frame from its tokens; every later frame t is that frame moved by a
distribution over shifts of at most `max_shift` pixels per axis that an MLP predicts from the motion
tokens (a dynamic filter, Jia et al. 2016, kept separable: one softmax over x-shifts and one over
y-shifts per frame, applied as two banded matrices). Pixels that come from outside the frame are black.

So the tokens carry what a clip shows once and how it moves once: a clip costs about one image's
tokens plus a few, and every frame is as sharp as the first. The model suits scenes whose content
moves rigidly (moving Fashion-MNIST); for general video use the 3D VQ-VAE (`VQVAE(frames=...)`).
Tokens: the h·w appearance tokens, then the motion tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.arrays import to_float
from .vqvae import VectorQuantizer, conv_decoder, conv_encoder


class MotionVQ(nn.Module):
    """`codebook_size` appearance codes and `motion_codes` motion codes, each with its own quantiser (one
    motion latent a clip among a hundred appearance ones would otherwise share codes with them and collapse
    onto a few); motion ids follow the appearance ids, so `vocab_size` = the two together."""
    learned = True  # elt trains its weights (and a run folder keeps them)

    def __init__(self, image_size: int = 40, channels: int = 1, frames: int = 9, codebook_size: int = 512,
                 latent_dim: int = 16, hidden: int = 64, downsample_stages: int = 2, motion_tokens: int = 1,
                 max_shift: int = 8, motion_codes: int = 32, beta: float = 0.25):
        super().__init__()
        if image_size % (2 ** downsample_stages):
            raise ValueError(f"image size {image_size} is not divisible by 2^{downsample_stages}")
        if frames < 2 or motion_tokens < 1 or max_shift < 1 or motion_codes < 2:
            raise ValueError(f"the motion tokenizer needs frames >= 2, motion_tokens >= 1, max_shift >= 1 and "
                             f"motion_codes >= 2, got {frames}, {motion_tokens}, {max_shift}, {motion_codes}")
        self.image_size, self.channels, self.frames, self.beta = image_size, channels, frames, beta
        self.motion_tokens, self.max_shift = motion_tokens, max_shift
        self.appearance_codes, self.motion_codes = codebook_size, motion_codes
        self.codebook_size = codebook_size + motion_codes  # the token vocabulary a transformer sees
        side = image_size // 2 ** downsample_stages
        self.side = side
        self.num_tokens = side * side + motion_tokens
        self.encoder = conv_encoder(channels, hidden, latent_dim, downsample_stages)
        self.decoder = conv_decoder(latent_dim, hidden, channels, downsample_stages)
        # Motion: stride-2 3D convs (time halved once), then pooled to `motion_tokens` time cells. GroupNorm and
        # SiLU: with plain ReLUs the encoder's units could all die, every clip then got one motion code and
        # every later frame the average of all shifts (a blur; seen in one of three trainings).
        self.motion_encoder = nn.Sequential(
            nn.Conv3d(channels, hidden // 4, (3, 4, 4), (1, 2, 2), (1, 1, 1)), *_norm_act(hidden // 4),
            nn.Conv3d(hidden // 4, hidden // 2, (4, 4, 4), (2, 2, 2), (1, 1, 1)), *_norm_act(hidden // 2),
            nn.Conv3d(hidden // 2, hidden, 3, (1, 2, 2), 1), *_norm_act(hidden),
            nn.AdaptiveAvgPool3d((motion_tokens, 1, 1)), nn.Flatten(2))
        self.motion_out = nn.Conv1d(hidden, latent_dim, 1)
        taps = 2 * max_shift + 1
        self.shifts = nn.Sequential(nn.Linear(latent_dim * motion_tokens, 256), nn.ReLU(),
                                    nn.Linear(256, (frames - 1) * 2 * taps))
        # S[i, j] = kernel[j - i + max_shift] on the band |j - i| <= max_shift: output row i reads input row j.
        offset = torch.arange(image_size)[None, :] - torch.arange(image_size)[:, None] + max_shift
        self.register_buffer("tap", offset.clamp(0, taps - 1), persistent=False)
        self.register_buffer("band", (offset >= 0) & (offset < taps), persistent=False)
        self.quantizer = VectorQuantizer(codebook_size, latent_dim, dead_below=1.0, restart_from="error")
        # A batch holds one motion latent per clip: a code is dead below one use in ten steps.
        self.motion_quantizer = VectorQuantizer(motion_codes, latent_dim, dead_below=0.1, restart_from="error")

    def _latents(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """clips (B, C, T, H, W) in [0, 1] → appearance latents (B·h·w, D) and motion latents (B·m, D), fp32."""
        x = clips * 2 - 1
        first = self.encoder(x[:, :, 0]).float().flatten(2).transpose(1, 2)      # (B, h·w, D)
        motion = self.motion_out(self.motion_encoder(x)).float().transpose(1, 2)  # (B, m, D)
        return first.reshape(-1, first.shape[-1]), motion.reshape(-1, motion.shape[-1])

    def _decode(self, first: torch.Tensor, motion: torch.Tensor, b: int) -> torch.Tensor:
        """Appearance (B·h·w, D) and motion (B·m, D) latents → clips (B, C, T, H, W) in [-1, 1]."""
        image = self.decoder(first.view(b, self.side, self.side, -1).permute(0, 3, 1, 2)).float()
        t, taps = self.frames - 1, 2 * self.max_shift + 1
        kernels = self.shifts(motion.reshape(b, -1)).float().view(b, t, 2, taps).softmax(-1)
        shift = kernels[..., self.tap] * self.band                          # (B, t, 2, H, H): x-, then y-shift
        moved = shift[:, :, None, 1] @ (image[:, None] + 1) @ shift[:, :, None, 0].transpose(-1, -2) - 1
        return torch.cat([image[:, :, None], moved.transpose(1, 2)], 2)     # (B, C, T, H, W)

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, C, T, H, W) in [0, 1] → ids (B, num_tokens): appearance row-major, then motion (offset by
        the appearance codebook)."""
        first, motion = self._latents(clips)
        b = clips.shape[0]
        return torch.cat([self.quantizer.nearest(first).view(b, -1),
                          self.motion_quantizer.nearest(motion).view(b, -1) + self.appearance_codes], 1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, num_tokens) → clips (B, C, T, H, W) in [0, 1]."""
        n = self.side * self.side
        first = self.quantizer.codebook[ids[:, :n].clamp(max=self.appearance_codes - 1)].flatten(0, 1)
        motion = self.motion_quantizer.codebook[(ids[:, n:] - self.appearance_codes).clamp(min=0)].flatten(0, 1)
        return ((self._decode(first, motion, ids.shape[0]) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def prepare(self, data: torch.Tensor, generator: torch.Generator) -> None:
        """The first codebooks: latents of random training clips (`data`: the uint8 set)."""
        first, motion = self._latents(to_float(data[torch.randperm(len(data), generator=generator)[:256]]))
        for q, z in ((self.quantizer, first), (self.motion_quantizer, motion)):
            pick = torch.randint(0, z.shape[0], (q.codebook_size,), generator=generator)
            q.codebook.copy_(z[pick])
            q.ema_sum.copy_(z[pick])

    def loss(self, clips: torch.Tensor, generator: torch.Generator | None = None):
        latents, quantized = self._latents(clips), []
        for q, z in zip((self.quantizer, self.motion_quantizer), latents):
            ids = q.nearest(z.detach())
            if self.training:
                q.update(z.detach(), ids, generator)
            quantized.append(q.codebook[ids])
        commit = sum(F.mse_loss(z, zq) for z, zq in zip(latents, quantized))
        straight = [z + (zq - z).detach() for z, zq in zip(latents, quantized)]
        recon = F.mse_loss(self._decode(*straight, clips.shape[0]), clips * 2 - 1)
        return recon + self.beta * commit, recon


def _norm_act(width: int) -> list[nn.Module]:
    return [nn.GroupNorm(min(8, width), width), nn.SiLU()]


__all__ = ["MotionVQ"]
