"""The shards `elt extract` writes, read back as one indexable array of token ids or latents (memory-mapped,
never loaded whole), with their labels and class names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import ImageData


class Extracted:
    """The shards of an extraction as one indexable array: `codes[idx]` (a LongTensor of example ids)
    gives token ids (long) or latents (float32); shards stay memory-mapped."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder) if folder else None
        path = self.folder / "manifest.json" if self.folder else None
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{path or 'data.data_dir'}: no extraction manifest; run `elt extract --out DIR` "
                                    f"first and pass that DIR as --data-dir")
        try:
            self.meta = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is damaged ({e}); run `elt extract` again into a new folder") from None
        missing = [i for i in range(self.meta["num_shards"]) if not (self.folder / f"shard_{i:05d}.npy").is_file()]
        if missing:
            raise ValueError(f"{self.folder}: {len(missing)} of {self.meta['num_shards']} shards missing (e.g. "
                             f"shard_{missing[0]:05d}); rerun the same `elt extract` command to finish it")
        self.shards = [np.load(self.folder / f"shard_{i:05d}.npy", mmap_mode="r") for i in range(self.meta["num_shards"])]
        self.labels = torch.from_numpy(np.concatenate(
            [np.load(self.folder / f"shard_{i:05d}.labels.npy") for i in range(self.meta["num_shards"])]))
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.classes = list(self.meta["classes"])
        self.latents = self.meta["what"] == "latents"

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple:
        return (len(self), *self.meta["shape"])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        idx = np.asarray(idx)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), *self.meta["shape"]), np.float32 if self.latents else np.int64)
        for s in np.unique(shard):
            sel = shard == s
            rows = idx[sel] - self.offsets[s]
            order = np.argsort(rows)  # sorted reads from the memory map
            out[np.flatnonzero(sel)[order]] = self.shards[s][rows[order]]
        return torch.from_numpy(out)

    def check(self, settings: dict) -> None:
        """`settings` (the training config's tokenizer, image size and framework, as the extraction's
        manifest records them) must be the extraction's."""
        want, got = self.meta["settings"], json.loads(json.dumps(settings))
        diff = sorted(k for k in want if want[k] != got.get(k))
        if diff:
            raise ValueError(f"{self.folder} was extracted with other {', '.join(diff)} than this config; train with "
                             f"the config the extraction used (its manifest.json), or extract again")

    def as_data(self) -> ImageData:
        """No images (shape (0, *example)), the labels and class names: what building the tokenizer and
        the model and naming classes need."""
        return ImageData(np.zeros((0, *self.meta["example_shape"]), np.uint8), self.labels.numpy(), self.classes)
