"""Class-per-folder image data (ImageNet layout): ROOT/train/CLASS/*.png|jpg|... and a held-out split.

The test split is ROOT/test, else ROOT/val (ImageNet's own layout), else one image in ten of every
class of ROOT/train (said in a warning; the training split then leaves those out). If ROOT has no
train/ folder, ROOT itself holds the class folders and serves both splits.
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


HELD_OUT = 10  # without test/ or val/: every 10th image of each class of train/ is the test split


def list_image_folder(root: str | None, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """[(image file, class id)] in class then file-name order, and the class names (sorted)."""
    if root is None:
        raise ValueError("the folder dataset needs --data-dir pointing at a folder of class folders")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; pass --data-dir with class folders")
    base, hold_out = root, None
    if (root / "train").is_dir():
        held = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        base = held if split == "test" and held is not None else root / "train"
        hold_out = split if held is None else None  # no held-out folder: train/ gives both, split by HELD_OUT
    elif (root / split).is_dir():
        base = root / split
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"no class folders in {base}; expected {base}/CLASS_NAME/image files")
    items = []
    for idx, name in enumerate(classes):
        files = [f for f in sorted((base / name).iterdir()) if f.suffix.lower() in EXTENSIONS]
        if not files:
            raise ValueError(f"class folder {base / name} holds no images ({', '.join(sorted(EXTENSIONS))}); add "
                             f"images or move the folder out of {base}")
        if hold_out:  # every HELD_OUT-th image of the class (its last one when it has fewer), never trained on
            if len(files) < 2:
                raise ValueError(f"class folder {base / name} holds one image: without a test/ or val/ folder, one "
                                 f"image of every class is held out for the test split; add images, or a test/ folder")
            held = set(files[HELD_OUT - 1::HELD_OUT] or files[-1:])
            files = [f for f in files if (f in held) == (hold_out == "test")]
        items += [(f, idx) for f in files]
    if hold_out == "test":
        log.warning("%s has no test/ or val/ folder: one image in %d of every class of train/ is held out as the "
                    "test split (and left out of training)", root, HELD_OUT)
    return items, classes


def read_image(path: Path, image_size: int) -> np.ndarray:
    """uint8 (size, size, 3): the centre square, resized (bicubic). Raises OSError/UnidentifiedImageError."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((image_size, image_size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def unreadable(path, error: Exception, strict: bool, what: str = "image", flag: str = "data.strict_images") -> None:
    """A file that cannot be read: an error with `strict`, else the caller skips it (and counts it)."""
    if strict:
        raise ValueError(f"corrupt or unreadable {what} {path} ({error}); move it out of the folder, or drop {flag} to skip "
                         f"such files") from None


def load_image_folder(root: str | None, split: str, image_size: int | None,
                      strict: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import UnidentifiedImageError

    if not image_size:
        raise ValueError("the folder dataset needs data.image_size (e.g. --set data.image_size=32)")
    items, classes = list_image_folder(root, split)
    images, labels, skipped = [], [], 0
    for f, idx in items:
        try:
            images.append(read_image(f, image_size))
            labels.append(idx)
        except (UnidentifiedImageError, OSError) as e:
            unreadable(f, e, strict)
            skipped += 1
    base = items[0][0].parent.parent if items else Path(root)
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s", skipped, base)
    if not images:
        raise ValueError(f"no readable images in the class folders of {base}")
    arr = np.stack(images)
    if np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2]):
        arr = arr[..., :1]
    return arr, np.asarray(labels, dtype=np.int64), classes
