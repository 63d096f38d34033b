"""The FID Inception network (Heusel et al. 2017), for FID, Inception Score and precision/recall.

The standard weights are TensorFlow's `inception-2015-12-05` graph as ported to PyTorch by pytorch-fid
(`pt_inception-2015-12-05-6726825d.pth`, the file torchmetrics and torch-fidelity also load). elt never
downloads it: give its path. The 8 hex digits in the file name are the start of its SHA-256, which is
checked (torch.hub's convention); give `sha256` to check the whole digest.

Two ways to run it:
- `FIDInceptionV3` below (the default): torchvision's Inception-v3 layout (module names match the state
  dict) with the FID graph's differences, as pytorch-fid patches them: average pools that ignore the
  padding in blocks A, C and E_1, a max pool in the last block E_2, 1008 classes, no aux head, BatchNorm
  eps 1e-3. Inputs: uint8 images resized to 299×299 with TensorFlow 1's bilinear rule (source pixel =
  destination × in/out, no half-pixel shift; what the TF graph and torch-fidelity do, while pytorch-fid's
  `F.interpolate` differs slightly), then (x − 128) / 128;
- torch-fidelity's `FeatureExtractorInceptionV3` (`backend="torch-fidelity"`) when torch-fidelity is
  installed (`make setup` installs it without its dependencies: its package `__init__` imports
  torchvision, which does not import beside the CPU torch wheel, so `fidelity_inception_class` loads
  the module file and the three small modules it needs, never the `__init__`).

Outputs: 2048-d pool features (FID, precision/recall) and the 1008 logits without the classifier's
bias (the Inception Score's input, as torch-fidelity computes it).
`tests/test_paper_scale.py` checks that both give the same features (random weights in both).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.arrays import as_tensor
from ..utils.files import verify_file

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
SHA256_PREFIX = "6726825d"
WHERE = (f"download {WEIGHTS_NAME} (pytorch-fid's release 'fid_weights') on a machine with internet and pass "
         "its path with --inception")


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):  # TensorFlow's average pool leaves the zero padding out of the mean
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """`max_pool`: the FID graph's last block pools with max where the paper (and block E_1) averages."""

    def __init__(self, cin: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1's `resize_bilinear(align_corners=False)` of (N, C, H, W) to size×size."""
    for dim in (3, 2):  # width, then height (torch-fidelity's order; the result is the same up to rounding)
        n = x.shape[dim]
        src = torch.arange(size, dtype=torch.float32) * torch.tensor(n / size, dtype=torch.float32)
        i0 = src.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        w = (src - i0).to(x.dtype)
        shape = [1] * x.ndim
        shape[dim] = size
        x = x.index_select(dim, i0) * (1 - w.view(shape)) + x.index_select(dim, i1) * w.view(shape)
    return x


class FIDInceptionV3(nn.Module):
    """float images (N, 3, H, W) in [0, 255] → (2048-d pool features, 1008 logits without fc's bias)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float (N, 3, H, W) with values in [0, 255]."""
        x = (resize_bilinear_tf1(x, 299) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        feats = x.mean((2, 3))
        return feats, feats @ self.fc.weight.t()  # "unbiased" logits: the Inception Score's (torch-fidelity)


class InceptionFeatures:
    """The FID Inception from a local weights file: `(features, logits) = extractor(uint8 images)`.
    `backend`: "auto" or "elt" (elt's port, checked against torch-fidelity's module to 1e-5 in the tests;
    one code path whatever is installed, so numbers do not change with the environment) or
    "torch-fidelity" (its own module, when installed)."""

    def __init__(self, path: str, sha256: str | None = None, device: str | torch.device = "cpu",
                 backend: str = "auto", check_prefix: bool = True):
        standard_name = check_prefix and sha256 is None and Path(str(path)).name == WEIGHTS_NAME
        file = verify_file(path, sha256, "FID Inception weights", WHERE, SHA256_PREFIX if standard_name else None)
        self.device = torch.device(device)
        if backend == "auto":
            backend = "elt"
        self.backend = backend
        if backend == "torch-fidelity":
            self.net = fidelity_inception_class()("inception-v3-compat", ["2048", "logits_unbiased"],
                                                  feature_extractor_weights_path=str(file))
        elif backend == "elt":
            self.net = FIDInceptionV3()
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
                self.net.load_state_dict(state)
            except Exception as e:  # torch.load raises pickle's, zipfile's and its own errors on a file of another kind
                reason = str(e).splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise ValueError(f"{file} is not the FID Inception state dict ({reason}); {WHERE}") from None
        else:
            raise ValueError(f"unknown Inception backend {backend!r}; choose auto, elt or torch-fidelity")
        self.net = self.net.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, C) → (features float64 (N, 2048), logits float64 (N, 1008))."""
        images = as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
        feats, logits = [], []
        for i in range(0, len(images), batch_size):
            x = images[i: i + batch_size].to(self.device).permute(0, 3, 1, 2)
            x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
            if self.backend == "torch-fidelity":
                f, lg = self.net(x)  # it takes uint8 (N, 3, H, W) and resizes itself
            else:
                f, lg = self.net(x.float())
            feats.append(f.double().cpu())
            logits.append(lg.double().cpu())
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def fidelity_inception_class():
    """torch-fidelity's `FeatureExtractorInceptionV3`, imported from its module file without running
    the package's `__init__` (which imports torchvision). The package is stood in for while its modules
    load, then `sys.modules` is restored, so a later `import torch_fidelity` is the real one."""
    import importlib
    import importlib.util
    import sys
    import types

    if "torch_fidelity.feature_extractor_inceptionv3" in sys.modules:  # the real package is imported
        return sys.modules["torch_fidelity.feature_extractor_inceptionv3"].FeatureExtractorInceptionV3
    spec = importlib.util.find_spec("torch_fidelity")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torch-fidelity is not installed: pip install --no-deps torch-fidelity")
    before = set(sys.modules)
    stand_in = types.ModuleType("torch_fidelity")
    stand_in.__path__, stand_in.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules["torch_fidelity"] = stand_in
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    finally:
        for name in set(sys.modules) - before:
            if name == "torch_fidelity" or name.startswith("torch_fidelity."):
                del sys.modules[name]


def fidelity_available() -> bool:
    try:
        fidelity_inception_class()
        return True
    except Exception:  # not installed, or a version whose module needs more than torch
        return False
