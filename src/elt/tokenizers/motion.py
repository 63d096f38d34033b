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

With `sprite_size` s < H (a layered codec, Wang & Adelson 1994: one moving layer on a black
background), the appearance tokens code an s×s window that holds the content, and the motion tokens
place it: every frame, the first included, is the window at a distribution over placements 0 … H − s
per axis. The encoder finds the window in the first frame with the same placement, transposed (a crop
by the first frame's placement, from the quantised motion latent). The appearance tokens are then
the content alone, in the same positions whatever its place in the frame (for a transformer, the
content's tokens are an image's); where the content sits is the motion tokens' job.

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
                 max_shift: int = 8, motion_codes: int = 32, beta: float = 0.25, sprite_size: int = 0):
        super().__init__()
        if image_size % (2 ** downsample_stages):
            raise ValueError(f"image size {image_size} is not divisible by 2^{downsample_stages}")
        if frames < 2 or motion_tokens < 1 or max_shift < 1 or motion_codes < 2:
            raise ValueError(f"the motion tokenizer needs frames >= 2, motion_tokens >= 1, max_shift >= 1 and "
                             f"motion_codes >= 2, got {frames}, {motion_tokens}, {max_shift}, {motion_codes}")
        if sprite_size and not (2 ** downsample_stages <= sprite_size < image_size
                                and sprite_size % 2 ** downsample_stages == 0):
            raise ValueError(f"the sprite size {sprite_size} must be below the image size {image_size} and "
                             f"divisible by 2^{downsample_stages} (0: the whole first frame)")
        self.image_size, self.channels, self.frames, self.beta = image_size, channels, frames, beta
        self.motion_tokens, self.max_shift, self.sprite_size = motion_tokens, max_shift, sprite_size
        self.appearance_codes, self.motion_codes = codebook_size, motion_codes
        self.codebook_size = codebook_size + motion_codes  # the token vocabulary a transformer sees
        side = (sprite_size or image_size) // 2 ** downsample_stages
        self.side = side
        self.num_tokens = side * side + motion_tokens
        self.encoder = conv_encoder(channels, hidden, latent_dim, downsample_stages)
        self.decoder = conv_decoder(latent_dim, hidden, channels, downsample_stages)
        # Motion: stride-2 3D convs (time halved once), then pooled to `motion_tokens` time cells. GroupNorm and
        # SiLU: with plain ReLUs the encoder's units could all die, every clip then got one motion code and
        # every later frame the average of all shifts (a blur; seen in one of three trainings).
        # A sprite's placement is absolute: its encoder also reads each pixel's coordinates (CoordConv, Liu et
        # al. 2018), which convolutions pooled over space cannot see.
        self.motion_encoder = nn.Sequential(
            nn.Conv3d(channels + (2 if sprite_size else 0), hidden // 4, (3, 4, 4), (1, 2, 2), (1, 1, 1)),
            *_norm_act(hidden // 4),
            nn.Conv3d(hidden // 4, hidden // 2, (4, 4, 4), (2, 2, 2), (1, 1, 1)), *_norm_act(hidden // 2),
            nn.Conv3d(hidden // 2, hidden, 3, (1, 2, 2), 1), *_norm_act(hidden),
            nn.AdaptiveAvgPool3d((motion_tokens, 1, 1)), nn.Flatten(2))
        self.motion_out = nn.Conv1d(hidden, latent_dim, 1)
        # Shifts of the first frame for frames 1 … T-1 (taps -max_shift … max_shift), or placements of the
        # sprite for frames 0 … T-1 (taps 0 … H - s).
        self.moved_frames = frames if sprite_size else frames - 1
        self.taps = taps = image_size - sprite_size + 1 if sprite_size else 2 * max_shift + 1
        self.shifts = nn.Sequential(nn.Linear(latent_dim * motion_tokens, 256), nn.ReLU(),
                                    nn.Linear(256, self.moved_frames * 2 * taps))
        # S[i, j] = kernel[j - i + max_shift] on the band |j - i| <= max_shift: output row i reads input row j;
        # a sprite's S[i, j] = kernel[i - j] for 0 <= i - j <= H - s (H rows read s sprite rows).
        rows = torch.arange(image_size)[:, None]
        offset = rows - torch.arange(sprite_size)[None, :] if sprite_size else (
            torch.arange(image_size)[None, :] - rows + max_shift)
        self.register_buffer("tap", offset.clamp(0, taps - 1), persistent=False)
        self.register_buffer("band", (offset >= 0) & (offset < taps), persistent=False)
        self.quantizer = VectorQuantizer(codebook_size, latent_dim, dead_below=1.0, restart_from="error")
        # A batch holds one motion latent per clip: a code is dead below one use in ten steps.
        self.motion_quantizer = VectorQuantizer(motion_codes, latent_dim, dead_below=0.1, restart_from="error")

    def _motion(self, x: torch.Tensor) -> torch.Tensor:
        """clips (B, C, T, H, W) in [-1, 1] → motion latents (B·m, D), fp32."""
        if self.sprite_size:  # + the y and x coordinate of every pixel, in [-1, 1]
            b, _, t, h, w = x.shape
            yx = torch.stack(torch.meshgrid(torch.linspace(-1, 1, h, device=x.device),
                                            torch.linspace(-1, 1, w, device=x.device), indexing="ij"))
            x = torch.cat([x, yx[:, None].expand(2, t, h, w)[None].expand(b, -1, -1, -1, -1).to(x.dtype)], 1)
        motion = self.motion_out(self.motion_encoder(x)).float().transpose(1, 2)  # (B, m, D)
        return motion.reshape(-1, motion.shape[-1])

    def _appearance(self, x: torch.Tensor, motion: torch.Tensor | None) -> torch.Tensor:
        """clips in [-1, 1] and their (quantised) motion latents → appearance latents (B·h·w, D), fp32: the
        first frame, or with a sprite the window its placement picks out of it."""
        first = x[:, :, 0]
        if self.sprite_size:
            place = self._moves(motion, x.shape[0])[:, 0]               # (B, 2, H, s): frame 0's placement
            first = place[:, None, 1].transpose(-1, -2) @ (first + 1) @ place[:, None, 0] - 1
        first = self.encoder(first).float().flatten(2).transpose(1, 2)  # (B, h·w, D)
        return first.reshape(-1, first.shape[-1])

    def _moves(self, motion: torch.Tensor, b: int) -> torch.Tensor:
        """Motion latents (B·m, D) → (B, moved frames, 2, H, H or s) banded matrices: x-, then y-moves."""
        kernels = self.shifts(motion.reshape(b, -1)).float().view(b, self.moved_frames, 2, self.taps).softmax(-1)
        return kernels[..., self.tap] * self.band

    def _decode(self, first: torch.Tensor, motion: torch.Tensor, b: int) -> torch.Tensor:
        """Appearance (B·h·w, D) and motion (B·m, D) latents → clips (B, C, T, H, W) in [-1, 1]."""
        image = self.decoder(first.view(b, self.side, self.side, -1).permute(0, 3, 1, 2)).float()
        shift = self._moves(motion, b)
        moved = shift[:, :, None, 1] @ (image[:, None] + 1) @ shift[:, :, None, 0].transpose(-1, -2) - 1
        if self.sprite_size:
            return moved.transpose(1, 2)                                 # (B, C, T, H, W)
        return torch.cat([image[:, :, None], moved.transpose(1, 2)], 2)  # (B, C, T, H, W)

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, C, T, H, W) in [0, 1] → ids (B, num_tokens): appearance row-major, then motion (offset by
        the appearance codebook)."""
        x, b = clips * 2 - 1, clips.shape[0]
        motion = self.motion_quantizer.nearest(self._motion(x))
        first = self.quantizer.nearest(self._appearance(x, self.motion_quantizer.codebook[motion]))
        return torch.cat([first.view(b, -1), motion.view(b, -1) + self.appearance_codes], 1)

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
        x = to_float(data[torch.randperm(len(data), generator=generator)[:256]]) * 2 - 1
        motion = self._motion(x)
        first = self._appearance(x, motion)
        for q, z in ((self.quantizer, first), (self.motion_quantizer, motion)):
            pick = torch.randint(0, z.shape[0], (q.codebook_size,), generator=generator)
            q.codebook.copy_(z[pick])
            q.ema_sum.copy_(z[pick])

    def loss(self, clips: torch.Tensor, generator: torch.Generator | None = None):
        x = clips * 2 - 1
        if self.sprite_size:  # the window is found by the quantised placement: motion first
            motion = self._motion(x)
            motion_q, motion_st = self.motion_quantizer.quantize(motion, generator)
            first = self._appearance(x, motion_st)
            first_q, first_st = self.quantizer.quantize(first, generator)
        else:
            first = self._appearance(x, None)
            first_q, first_st = self.quantizer.quantize(first, generator)
            motion = self._motion(x)
            motion_q, motion_st = self.motion_quantizer.quantize(motion, generator)
        commit = F.mse_loss(first, first_q) + F.mse_loss(motion, motion_q)
        recon = F.mse_loss(self._decode(first_st, motion_st, clips.shape[0]), x)
        return recon + self.beta * commit, recon


def _norm_act(width: int) -> list[nn.Module]:
    return [nn.GroupNorm(min(8, width), width), nn.SiLU()]


__all__ = ["MotionVQ"]
