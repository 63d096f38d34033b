"""Pre-tokenise (masked) or pre-encode (diffusion) a data set once into sharded memory-mapped arrays,
then train from them: `elt extract`, then `elt train --set data.dataset=extracted --data-dir DIR`.

Images (ImageNet layout: class folders) and UCF-101 videos are read one shard at a time, never all at
once: centre crop to `data.image_size` (videos: `data.frames` frames from the middle), optionally the
horizontal flip too (`flip`: a second copy of every example, as DiT/MAR augment), then the run's
tokenizer. Each shard is `shard_NNNNN.npy` (token ids int16/int32, or latents float16) with
`shard_NNNNN.labels.npy`, written atomically and labels first, so an interrupted extraction resumes
with the missing shards; under torchrun ranks take shards round-robin. `manifest.json` records the
data, the tokenizer (its config and a hash of its weights) and the shapes; training checks that its
config's tokenizer is the one the manifest names. A tokenizer elt trains (vqvae/klvae) is trained
first on at most `tokenizer_examples` examples and saved in the folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import Config
from ..data import ImageData
from ..data.folder import list_image_folder, read_image, unreadable
from ..utils.arrays import as_tensor, to_float
from ..utils.progress import bar
from .build import make_tokenizer
from .checkpoint import claim_manifest, load_weights, save_arrays, save_weights
from .devices import rank_world
from .prepare import InMemory, Split, get_tokenizer, manifest_settings, tokenizer_hash

log = logging.getLogger("elt")
VERSION = 1


def _source(cfg: Config, split: str):
    """(items, read(item) → uint8 array, label(item), class names) without loading the data set."""
    d = cfg.data
    if d.dataset == "folder":
        items, classes = list_image_folder(d.data_dir, split)
        if not d.image_size:
            raise ValueError("the folder dataset needs data.image_size (e.g. --set data.image_size=256)")
        return items, lambda it: read_image(it[0], d.image_size), lambda it: it[1], classes
    if d.dataset == "ucf101":
        from ..data.ucf101 import decode_clip, read_split
        items, classes = read_split(d.data_dir, split, d.fold)
        items = items[: d.clips] if d.clips and split == "train" else items
        root = Path(d.data_dir)
        return items, lambda it: decode_clip(root / it[0], d.frames, d.image_size or 128), lambda it: it[1], classes
    data = Split.of(cfg, split).data  # the embedded data sets are small: read them whole
    return (list(range(len(data))), lambda i: data.images[i], lambda i: int(data.labels[i]), data.class_names)


def _read(it, read, strict: bool) -> np.ndarray | None:
    """The example, or None for an unreadable file (an error with data.strict_images)."""
    try:
        return read(it)
    except Exception as e:  # PIL/PyAV raise their own error types for broken files
        unreadable(it[0] if isinstance(it, tuple) else it, e, strict, "file")
        return None


def _probe(items, read, strict: bool) -> np.ndarray:
    """The first readable example (its shape sizes the tokenizer and the manifest)."""
    for it in items[:100]:
        if (x := _read(it, read, strict)) is not None:
            return x
    raise ValueError("none of the first 100 files could be read; check --data-dir")


def _fit_tokenizer(cfg: Config, items, read, label, classes, limit: int, probe: np.ndarray, progress: bool):
    """The config's tokenizer; one elt trains is trained (cached) on `limit` examples spread over the set."""
    tok = make_tokenizer(cfg, probe.shape)
    if not tok.learned:
        return tok
    sub = items[:: max(1, len(items) // limit)][:limit]
    got = [(x, label(it)) for it in bar(sub, desc="tokenizer data", progress=progress)
           if (x := _read(it, read, cfg.data.strict_images)) is not None]
    data = ImageData(np.stack([x for x, _ in got]), np.asarray([y for _, y in got]), classes)
    subset = InMemory(data, f"{Split.of(cfg, 'train').identity}-subset{limit}")
    return get_tokenizer(cfg, subset, cfg.train.seed, progress)


def extract(cfg: Config, out: str | Path, split: str = "train", shard_size: int = 4096, flip: bool = False,
            tokenizer_examples: int = 20_000, device: str = "cpu", progress: bool = True) -> Path:
    rank, world = rank_world()
    out = Path(out)
    items, read, label, classes = _source(cfg, split)
    if not items:
        raise ValueError(f"no examples to extract from {cfg.data.dataset} {split}")
    probe = _probe(items, read, cfg.data.strict_images)
    manifest_path = out / "manifest.json"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = _fit_tokenizer(cfg, items, read, label, classes, tokenizer_examples, probe, progress)
        if tokenizer.learned:
            save_weights(tokenizer, out / "tokenizer.safetensors")
    if world > 1:
        dist.barrier()
    if rank > 0:
        tokenizer = make_tokenizer(cfg, probe.shape)
        if tokenizer.learned:
            load_weights(tokenizer, out / "tokenizer.safetensors", "tokenizer")
    tokenizer = tokenizer.to(device).eval()
    latents = cfg.framework == "diffusion"
    shape = list(tokenizer.encode(to_float(as_tensor(probe[None])).to(device)).shape[1:])
    dtype = "float16" if latents else ("int16" if tokenizer.codebook_size <= 32767 else "int32")
    num_shards = (len(items) + shard_size - 1) // shard_size
    meta = {"version": VERSION, "what": "latents" if latents else "tokens", "shape": shape, "dtype": dtype,
            "example_shape": list(probe.shape),
            "num_shards": num_shards, "examples": len(items), "flip": flip, "split": split, "classes": classes,
            "dataset": cfg.data.dataset, "data_dir": str(cfg.data.data_dir), "settings": manifest_settings(cfg),
            "tokenizer_hash": tokenizer_hash(tokenizer)}
    if rank == 0:
        claim_manifest(manifest_path, meta, lambda old, new: old == new, f"{out} holds an extraction with other "
                       f"settings or another tokenizer; choose another --out (or move that folder aside)")
    if world > 1:
        dist.barrier()
    todo = [i for i in range(rank, num_shards, world) if not (out / f"shard_{i:05d}.npy").is_file()]
    if len(todo) < len(range(rank, num_shards, world)) and rank == 0:
        log.info("resuming extraction in %s: %d of %d shards left", out, len(todo), num_shards)
    skipped = 0
    for i in bar(todo, desc=f"extract {meta['what']}", progress=progress and rank == 0):
        examples, labels = [], []
        for it in items[i * shard_size: (i + 1) * shard_size]:
            x = _read(it, read, cfg.data.strict_images)
            if x is None:
                skipped += 1
                continue
            examples.append(x)
            labels.append(label(it))
        x = np.stack(examples) if examples else np.zeros((0, *probe.shape), np.uint8)
        if flip:
            x, labels = np.concatenate([x, x[..., ::-1, :]]), labels + labels  # W is the second-last axis
        codes = []
        with torch.no_grad():
            for j in range(0, len(x), 64):
                codes.append(tokenizer.encode(to_float(as_tensor(np.ascontiguousarray(x[j: j + 64]))).to(device)).cpu())
        codes = torch.cat(codes).numpy().astype(dtype) if codes else np.zeros((0, *shape), dtype)
        save_arrays(out / f"shard_{i:05d}.labels.npy", np.asarray(labels, np.int64))
        save_arrays(out / f"shard_{i:05d}.npy", codes)  # last: its presence marks the shard done
    if skipped:
        log.warning("skipped %d unreadable file(s) while extracting", skipped)
    if world > 1:
        dist.barrier()
    return out
