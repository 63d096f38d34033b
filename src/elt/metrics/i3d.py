"""Real FVD (Unterthiner et al. 2018) with the I3D network as StyleGAN-V (Skorokhodov et al. 2022)
computes it: the TorchScript file `i3d_torchscript.pt` that StyleGAN-V's and many later papers'
evaluators download (the Kinetics-400 I3D of the original FVD code, exported to TorchScript). elt
never downloads it: give its path; its SHA-256 is checked against `I3D_SHA256`.

Features: clips (N, T, H, W, C) uint8 → float (N, C, T, H, W) in [0, 255], grayscale repeated to
3 channels, then `detector(x, rescale=True, resize=True, return_features=True)` (the network
rescales to [-1, 1] and resizes to 224×224 itself), giving 400-d logits-layer features; FVD is the
Fréchet distance of their Gaussians (`elt.metrics.frechet`). StyleGAN-V's FVD-2048 uses 2048 clips
of 16 frames; the paper's UCF-101 protocol uses 10,000 generated clips. `InceptionI3d` below
is the network itself (pytorch-i3d's layout), which the tests script with random weights.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.arrays import as_tensor
from ..utils.files import verify_file

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


# The I3D network itself (Carreira & Zisserman 2017: Inception-v1 inflated to 3D, Kinetics-400), in
# the layout of pytorch-i3d (piergiaj), with TensorFlow's "SAME" padding. elt uses it to build
# TorchScript detectors with random weights for its tests, and users can script it around converted
# weights (`script_detector`); the FVD numbers of papers come from StyleGAN-V's file, not from this.

def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return pad // 2, pad - pad // 2


class Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True, relu: bool = True,
                 bias: bool = False, bn_eps: float = 0.001):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=bn_eps, momentum=0.01) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = _same_pad(x.shape[2], self.kernel[0], self.stride[0]), _same_pad(x.shape[3], self.kernel[1], self.stride[1]), \
            _same_pad(x.shape[4], self.kernel[2], self.stride[2])
        x = self.bn(self.conv3d(F.pad(x, [w[0], w[1], h[0], h[1], t[0], t[1]])))
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = _same_pad(x.shape[2], self.kernel[0], self.stride[0]), _same_pad(x.shape[3], self.kernel[1], self.stride[1]), \
            _same_pad(x.shape[4], self.kernel[2], self.stride[2])
        return F.max_pool3d(F.pad(x, [w[0], w[1], h[0], h[1], t[0], t[1]]), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c: tuple, bn_eps: float = 0.001):
        super().__init__()
        self.b0 = Unit3D(cin, c[0], bn_eps=bn_eps)
        self.b1a, self.b1b = Unit3D(cin, c[1], bn_eps=bn_eps), Unit3D(c[1], c[2], (3, 3, 3), bn_eps=bn_eps)
        self.b2a, self.b2b = Unit3D(cin, c[3], bn_eps=bn_eps), Unit3D(c[3], c[4], (3, 3, 3), bn_eps=bn_eps)
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5], bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """clips (N, 3, T ≥ 9, 224, 224) in [-1, 1] → 400 Kinetics logits (averaged over time).
    `bn_eps`: TensorFlow's I3D (and pytorch-i3d upstream) use 0.001; the copy in TATS and cd-fvd,
    whose `i3d_pretrained_400.pt` many video papers' FVD uses, has PyTorch's default 1e-5."""

    def __init__(self, num_classes: int = 400, bn_eps: float = 0.001):
        super().__init__()
        e = bn_eps
        mods = [("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2), bn_eps=e)),
                ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
                ("Conv3d_2b_1x1", Unit3D(64, 64, bn_eps=e)), ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3), bn_eps=e)),
                ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
                ("Mixed_3b", InceptionModule(192, (64, 96, 128, 16, 32, 32), e)),
                ("Mixed_3c", InceptionModule(256, (128, 128, 192, 32, 96, 64), e)),
                ("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))),
                ("Mixed_4b", InceptionModule(480, (192, 96, 208, 16, 48, 64), e)),
                ("Mixed_4c", InceptionModule(512, (160, 112, 224, 24, 64, 64), e)),
                ("Mixed_4d", InceptionModule(512, (128, 128, 256, 24, 64, 64), e)),
                ("Mixed_4e", InceptionModule(512, (112, 144, 288, 32, 64, 64), e)),
                ("Mixed_4f", InceptionModule(528, (256, 160, 320, 32, 128, 128), e)),
                ("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))),
                ("Mixed_5b", InceptionModule(832, (256, 160, 320, 32, 128, 128), e)),
                ("Mixed_5c", InceptionModule(832, (384, 192, 384, 48, 128, 128), e))]
        self.end_points = nn.ModuleDict(mods)
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)

    @classmethod
    def from_pytorch_i3d(cls, state_dict: dict, bn_eps: float = 1e-5) -> InceptionI3d:
        """The network from a pytorch-i3d state dict (piergiaj's layout, as TATS's and cd-fvd's
        `i3d_pretrained_400.pt`): its keys lack this module's `end_points.` prefix. Script the result with
        `script_detector` to use it for FVD; say which file and eps beside any number it gives."""
        net = cls(num_classes=state_dict["logits.conv3d.weight"].shape[0], bn_eps=bn_eps)
        ours = {(k if k.startswith("logits.") else f"end_points.{k}"): v for k, v in state_dict.items()}
        missing, unexpected = net.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise ValueError(f"not a pytorch-i3d state dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.end_points.values():
            x = m(x)
        x = self.logits(F.avg_pool3d(x, (2, 7, 7), (1, 1, 1)))
        return x.mean((2, 3, 4))


class Detector(nn.Module):
    """StyleGAN-V's detector call signature around an I3D: `(x, rescale, resize, return_features)` with
    x (N, 3, T, H, W) in [0, 255]; rescale → [-1, 1]; resize → 224×224 (trilinear, per frame)."""

    def __init__(self, i3d: InceptionI3d):
        super().__init__()
        self.i3d = i3d

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        logits = self.i3d(x)
        return logits if return_features else logits.softmax(1)


def script_detector(i3d: InceptionI3d, path: str | Path) -> Path:
    """Saves `i3d` wrapped in the detector interface as a TorchScript file `I3DFeatures` can load."""
    torch.jit.script(Detector(i3d.eval())).save(str(path))
    return Path(path)
