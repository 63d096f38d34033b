"""Real FVD (Unterthiner et al. 2018) with the I3D network as StyleGAN-V (Skorokhodov et al. 2022)
computes it: the TorchScript file `i3d_torchscript.pt` that StyleGAN-V's and many later papers'
evaluators download (the Kinetics-400 I3D of the original FVD code, exported to TorchScript). elt
never downloads it: give its path; its SHA-256 is checked against `I3D_SHA256`.

Features: clips (N, T, H, W, C) uint8 → float (N, C, T, H, W) in [0, 255], grayscale repeated to
3 channels, then `detector(x, rescale=True, resize=True, return_features=True)` (the network
rescales to [-1, 1] and resizes to 224×224 itself), giving 400-d logits-layer features; FVD is the
Fréchet distance of their Gaussians (`elt.metrics.frechet`). StyleGAN-V's FVD-2048 uses 2048 clips
of 16 frames; the paper's UCF-101 protocol (spec §4.3) 10,000 generated clips.
"""
from __future__ import annotations

import numpy as np
import torch

from ..tokenizers.vqvae import as_tensor
from ..weights import verify_file

# SHA-256 of i3d_torchscript.pt as published with community evaluators' asset lists (the file could
# not be fetched here to re-check it); pass sha256=None to skip the check for a file you trust.
I3D_SHA256 = "bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2"
WHERE = "download i3d_torchscript.pt (StyleGAN-V's FVD detector) on a machine with internet and pass its path"


class I3DFeatures:
    def __init__(self, path: str, sha256: str | None = I3D_SHA256, device: str | torch.device = "cpu"):
        file = verify_file(path, sha256, "I3D TorchScript", WHERE)
        try:
            self.net = torch.jit.load(str(file), map_location=device).eval()
        except RuntimeError as e:
            raise ValueError(f"I3D file {file} is not a TorchScript module ({str(e).splitlines()[0]}); {WHERE}") from None
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, clips, batch_size: int = 16) -> np.ndarray:
        """uint8 clips (N, T, H, W, C) → features float64 (N, D)."""
        clips = as_tensor(clips)
        out = []
        for i in range(0, len(clips), batch_size):
            x = clips[i: i + batch_size].to(self.device).permute(0, 4, 1, 2, 3).float()
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1, 1)
            out.append(self.net(x, rescale=True, resize=True, return_features=True).double().cpu())
        return torch.cat(out).numpy()
