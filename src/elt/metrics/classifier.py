"""A small CNN classifier trained by elt on the training split; its penultimate features feed the
Fréchet distance and its predictions the class accuracy of samples. Metric names carry the
extractor (e.g. `fd_fmnist_cnn`, `acc_fmnist_cnn`), never "FID"."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.arrays import to_float
from ..utils.progress import bar


class FeatureClassifier(nn.Module):
    def __init__(self, image_size: int = 28, channels: int = 1, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        self.channels, self.num_classes, self.feature_dim = channels, num_classes, feature_dim
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, feature_dim)
        self.drop = nn.Dropout(0.3)
        self.cls = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1] → features (B, feature_dim)."""
        return F.relu(self.fc(self.conv(images * 2 - 1).flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.cls(self.drop(self.features(images)))

    @torch.no_grad()
    def features_and_predictions(self, images: torch.Tensor, batch_size: int = 1000):
        self.eval()
        feats, preds = [], []
        for i in range(0, len(images), batch_size):
            f = self.features(images[i: i + batch_size])
            feats.append(f)
            preds.append(self.cls(f).argmax(1))
        return torch.cat(feats).double().numpy(), torch.cat(preds).numpy()


def fit_classifier(model: nn.Module, n: int, batch_loss, epochs: float, batch_size: int, lr: float, seed: int,
                   progress: bool, desc: str = "metric classifier") -> nn.Module:
    """AdamW with one-cycle for `epochs` over n examples in random batches; `batch_loss(idx)` gives
    the loss of the examples at idx (shared by the image and the clip classifiers)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps = max(1, int(math.ceil(epochs * n / batch_size)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in bar(range(steps), desc=desc, progress=progress):
        loss = batch_loss(torch.randint(0, n, (batch_size,), generator=g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def train_classifier(model: FeatureClassifier, images: np.ndarray, labels: np.ndarray, epochs: float = 2.0,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0, progress: bool = True) -> FeatureClassifier:
    x, y = to_float(images), torch.as_tensor(labels)
    return fit_classifier(model, len(x), lambda idx: F.cross_entropy(model(x[idx]), y[idx]), epochs, batch_size,
                          lr, seed, progress)
