"""Class-per-folder image data (ImageNet layout): ROOT/[train|test]/CLASS/*.png|jpg|...

If ROOT has no train/test sub-folders, ROOT itself holds the class folders and serves both splits.
Images are center-cropped to a square and resized to `image_size`; grayscale stays 1 channel only if
every image is grayscale. Unreadable images are skipped and counted in a warning, or are an
error with `strict=True` (config `data.strict_images`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
log = logging.getLogger(__name__)


def load_image_folder(root: str | None, split: str, image_size: int | None,
                      strict: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    if root is None:
        raise ValueError("the folder dataset needs --data-dir pointing at a folder of class folders")
    if not image_size:
        raise ValueError("the folder dataset needs data.image_size (e.g. --set data.image_size=32)")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data folder {base} does not exist; pass --data-dir with class folders")
    if (base / split).is_dir():
        base = base / split
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"no class folders in {base}; expected {base}/CLASS_NAME/image files")
    images, labels, skipped = [], [], 0
    for idx, name in enumerate(classes):
        for f in sorted((base / name).iterdir()):
            if f.suffix.lower() not in EXTENSIONS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    s = min(im.size)
                    left, top = (im.width - s) // 2, (im.height - s) // 2
                    im = im.crop((left, top, left + s, top + s)).resize((image_size, image_size), Image.BICUBIC)
                    images.append(np.asarray(im, dtype=np.uint8))
                    labels.append(idx)
            except (UnidentifiedImageError, OSError) as e:
                if strict:
                    raise ValueError(f"corrupt or unreadable image {f} ({e}); remove it, or drop "
                                     f"data.strict_images to skip such files") from None
                skipped += 1
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s", skipped, base)
    if not images:
        raise ValueError(f"no readable images in the class folders of {base}")
    arr = np.stack(images)
    if np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2]):
        arr = arr[..., :1]
    return arr, np.asarray(labels, dtype=np.int64), classes
