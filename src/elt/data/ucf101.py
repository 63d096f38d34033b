"""UCF-101 (Soomro et al. 2012) from its standard release, decoded with PyAV (`pip install av`).

Layout (the two archives unpacked side by side; `--data-dir` names the video folder):

    UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi ...
    ucfTrainTestlist/classInd.txt        "1 ApplyEyeMakeup"
    ucfTrainTestlist/trainlist01.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist01.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

(`ucfTrainTestlist` may also sit inside the video folder.) Official split `fold` 1, 2 or 3. Each video
gives one clip of `frames` consecutive frames (every `stride`-th frame) from its middle, resized so
the short side is `size` and center-cropped to size×size; a video shorter than the clip repeats its
last frame. Unreadable videos are skipped with a warning, or are an error with `strict`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .folder import unreadable
from ..utils.progress import bar

log = logging.getLogger(__name__)


def _lists_dir(root: Path) -> Path:
    for d in (root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"):
        if (d / "classInd.txt").is_file():
            return d
    raise FileNotFoundError(f"UCF-101 split lists (ucfTrainTestlist/classInd.txt) not found in {root} or beside it; "
                            f"unpack UCF101TrainTestSplits-RecognitionTask.zip next to the UCF-101 folder")


def read_split(root: str | Path, split: str, fold: int = 1) -> tuple[list[tuple[str, int]], list[str]]:
    """[(relative path, class id)] of an official split, and the class names in classInd order."""
    if fold not in (1, 2, 3):
        raise ValueError(f"UCF-101 has official splits 1, 2 and 3, got data.fold={fold}")
    lists = _lists_dir(Path(root))
    names = {}
    for line in (lists / "classInd.txt").read_text().split("\n"):
        if line.strip():
            idx, name = line.split()
            names[int(idx) - 1] = name
    classes = [names[i] for i in range(len(names))]
    index = {name: i for i, name in enumerate(classes)}
    path = lists / f"{split}list0{fold}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"UCF-101 split list {path} not found; the ucfTrainTestlist folder is incomplete")
    items = []
    for line in path.read_text().split("\n"):
        if not line.strip():
            continue
        rel = line.split()[0]
        cls = rel.split("/")[0]
        if cls not in index:
            raise ValueError(f"{path}: class folder {cls!r} of {rel} is not in classInd.txt")
        items.append((rel, index[cls]))
    return items, classes


def decode_clip(path: str | Path, frames: int = 16, size: int = 128, stride: int = 1) -> np.ndarray:
    """One clip uint8 (frames, size, size, 3) from the middle of a video file."""
    import av
    from PIL import Image

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = list(container.decode(stream))  # frames stay YUV; only the picked ones become RGB arrays
        if not decoded:
            raise ValueError(f"{path} has no video frames")
        span = (frames - 1) * stride + 1
        start = max(0, (len(decoded) - span) // 2)
        index = [min(start + i * stride, len(decoded) - 1) for i in range(frames)]
        rgb = {j: decoded[j].to_ndarray(format="rgb24") for j in set(index)}
    picked = [rgb[j] for j in index]
    h, w = picked[0].shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(picked):
        im = Image.fromarray(frame).resize((nw, nh), Image.BICUBIC)
        out[i] = np.asarray(im)[top: top + size, left: left + size]
    return out


class UCF101Clips:
    """The clips of an official split list, decoded when indexed: `clips[i:j]` → uint8 (M, frames, size,
    size, 3) with unreadable videos skipped (and warned about; `strict` raises). `elt fvd` under
    torchrun reads its reference this way, so each rank decodes only its share."""

    def __init__(self, root: str | None, split: str, frames: int = 16, size: int | None = 128, fold: int = 1,
                 clips: int | None = None, strict: bool = False):
        try:
            import av  # noqa: F401
        except ImportError:
            raise ImportError("UCF-101 decoding needs PyAV: pip install 'elt[video]' (or pip install av)") from None
        if root is None:
            raise ValueError("the ucf101 dataset needs --data-dir pointing at the UCF-101 video folder")
        self.base = Path(root)
        if not self.base.is_dir():
            raise FileNotFoundError(f"UCF-101 folder {self.base} does not exist; pass --data-dir with the class folders")
        items, self.classes = read_split(self.base, split, fold)
        self.items = items[:clips] if clips else items
        self.frames, self.size, self.strict = frames, size or 128, strict

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, i: int) -> np.ndarray | None:
        """Clip i, or None when its video cannot be read."""
        path = self.base / self.items[i][0]
        try:
            return decode_clip(path, self.frames, self.size)
        except Exception as e:  # PyAV raises its own error types for broken files
            unreadable(path, e, self.strict, "video")
            return None

    def __getitem__(self, index: slice) -> np.ndarray:
        wanted = range(*index.indices(len(self)))
        got = [c for c in map(self.decode, wanted) if c is not None]
        if len(got) < len(wanted):
            log.warning("skipped %d unreadable video(s) of clips %d..%d", len(wanted) - len(got), wanted.start,
                        wanted.stop - 1)
        return np.stack(got) if got else np.zeros((0, self.frames, self.size, self.size, 3), np.uint8)


def load_ucf101(root: str | None, split: str, frames: int = 16, size: int | None = 128, fold: int = 1,
                clips: int | None = None, strict: bool = False, progress: bool = True):
    """(clips uint8 (N, frames, size, size, 3), labels (N,), class names) of an official split."""
    source = UCF101Clips(root, split, frames, size, fold, clips, strict)
    videos, labels = [], []
    for i in bar(range(len(source)), desc=f"decode ucf101 {split}", progress=progress):
        clip = source.decode(i)
        if clip is not None:
            videos.append(clip)
            labels.append(source.items[i][1])
    if len(videos) < len(source):
        log.warning("skipped %d unreadable video(s) of the UCF-101 %s list", len(source) - len(videos), split)
    if not videos:
        raise ValueError(f"no readable videos for the UCF-101 {split} list {fold} under {source.base}")
    return np.stack(videos), np.asarray(labels, dtype=np.int64), source.classes
