"""Pictures and exports of samples, written atomically: image grids (PNG), clip grids (animated GIF, and
MP4 where PyAV is installed), labelled any-time grids (one row per loop count with its GFLOPs, one column
per class), a caption strip with the sampling settings, StyleGAN-V's frame folders and the ADM
evaluator's `.npz`."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_path, write_bytes
from ..utils.files import with_ext
from .checkpoint import save_arrays


def grid_canvas(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """uint8 images (rows·cols, H, W, C), row-major → one uint8 canvas with `pad` white pixels between tiles."""
    n, h, w, c = images.shape
    if n != rows * cols:
        raise ValueError(f"grid of {rows}x{cols} needs {rows * cols} images, got {n}")
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return canvas


def _pil(canvas: np.ndarray, scale: int):
    from PIL import Image

    im = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


class Labels:
    """Row labels (left), column labels (top) and a caption strip (bottom) around a grid of tiles
    `tile` = (h, w) pixels (after scaling) with `pad` between them, drawn in black on white."""

    def __init__(self, rows: list[str] | None = None, cols: list[str] | None = None, caption: str | None = None):
        self.rows, self.cols, self.caption = rows, cols, caption

    def apply(self, grid, tile: tuple[int, int], pad: int):
        from PIL import Image, ImageDraw

        font = _font()
        probe = ImageDraw.Draw(grid)
        left = 0 if not self.rows else int(max(probe.textlength(r, font=font) for r in self.rows)) + 8
        top = 0 if not self.cols else 16
        lines = _wrap(probe, self.caption, font, grid.width + left - 8) if self.caption else []
        bottom = 4 + 13 * len(lines) if lines else 0
        out = Image.new(grid.mode, (grid.width + left, grid.height + top + bottom), "white")
        out.paste(grid, (left, top))
        draw, ink = ImageDraw.Draw(out), 0
        h, w = tile
        for i, text in enumerate(self.rows or []):
            y = top + pad + i * (h + pad) + h // 2 - 6
            draw.text((4, y), text, fill=ink, font=font)
        for j, text in enumerate(self.cols or []):
            x = left + pad + j * (w + pad)
            draw.text((x, 2), _fit(draw, text, font, w), fill=ink, font=font)
        for k, line in enumerate(lines):
            draw.text((4, top + grid.height + 2 + 13 * k), line, fill=ink, font=font)
        return out


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """`text` broken at spaces into lines of at most `width` pixels."""
    lines, cur = [], ""
    for word in text.split(" "):
        trial = f"{cur} {word}".strip()
        if cur and draw.textlength(trial, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


def _frame(canvas: np.ndarray, shape: tuple, scale: int, pad: int, labels: Labels | None):
    im = _pil(canvas, scale)
    if labels is None:
        return im
    return labels.apply(im.convert("L") if im.mode == "L" else im, (shape[0] * scale, shape[1] * scale), pad * scale)


def save_grid(images: np.ndarray, rows: int, cols: int, path: Path, scale: int = 1, pad: int = 2,
              labels: Labels | None = None) -> Path:
    """uint8 images (rows·cols, H, W, C), row-major, → one PNG with `pad` pixels between tiles (and
    `labels` around them), written atomically."""
    im = _frame(grid_canvas(images, rows, cols, pad), images.shape[1:3], scale, pad, labels)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)


def video_grid(clips: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """uint8 clips (rows·cols, T, H, W, C) → uint8 frames of the grid (T, H', W', C)."""
    return np.stack([grid_canvas(clips[:, t], rows, cols, pad) for t in range(clips.shape[1])])


def save_video_grid(clips: np.ndarray, rows: int, cols: int, path: Path, scale: int = 1, fps: int = 8,
                    pad: int = 2, labels: Labels | None = None) -> list[Path]:
    """uint8 clips (rows·cols, T, H, W, C), row-major → an animated GIF at `path` (looping), and an
    MP4 beside it when PyAV is installed, both written atomically. Returns the files written."""
    frames = [_frame(f, clips.shape[2:4], scale, pad, labels) for f in video_grid(clips, rows, cols, pad)]
    path = write_gif(frames, path, fps)
    written = [path]
    try:
        import av
    except ImportError:
        return written
    mp4 = with_ext(Path(path).parent / Path(path).stem, ".mp4")
    with atomic_path(mp4) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = (frames[0].width + 1) // 2 * 2, (frames[0].height + 1) // 2 * 2  # even sides
        stream.pix_fmt = "yuv420p"
        for im in frames:
            rgb = np.zeros((stream.height, stream.width, 3), np.uint8)
            rgb[: im.height, : im.width] = np.asarray(im.convert("RGB"))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    written.append(mp4)
    return written


def write_gif(frames, path: Path, fps: int = 8) -> Path:
    """PIL images or uint8 arrays (H, W[, C]) → a looping animated GIF at `path`, written atomically."""
    from PIL import Image

    frames = [f if isinstance(f, Image.Image) else Image.fromarray(f) for f in frames]
    path = Path(path)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return path


def export_stylegan_v(clips: np.ndarray, folder: str | Path) -> Path:
    """uint8 clips (N, T, H, W, C) → FOLDER/VVVVVV/FFFFFF.png: one directory of frames per video, the
    layout StyleGAN-V's `calc_metrics_for_dataset.py --fake_data_path FOLDER` reads (frames in name
    order; grayscale saved as grayscale PNGs, which its loader converts to RGB)."""
    from PIL import Image

    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.dtype != np.uint8:
        raise ValueError(f"expected uint8 clips (N, T, H, W, C), got {clips.dtype} {clips.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for v, clip in enumerate(clips):
        d = folder / f"{v:06d}"
        d.mkdir(exist_ok=True)
        for t, frame in enumerate(clip):
            buffer = io.BytesIO()
            Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(buffer, format="PNG")
            write_bytes(d / f"{t:06d}.png", buffer.getvalue())
    return folder


def export_adm_npz(images: np.ndarray, path: str | Path, labels: np.ndarray | None = None) -> Path:
    """uint8 images (N, H, W, 3) → an `.npz` the ADM evaluator (guided-diffusion's
    `evaluations/evaluator.py`) reads: `arr_0` the images, `arr_1` the class labels when given.
    Grayscale (C = 1) is repeated to RGB, as the evaluator's Inception expects 3 channels."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": np.asarray(labels, np.int64)}
    save_arrays(path, **arrays)
    return path


def caption_text(title: str, settings: dict) -> str:
    """"TITLE: key value, key value, ..." with nested values as key=value (no Python dict syntax)."""
    def text(v):
        if isinstance(v, dict):
            return " ".join(f"{k}={text(x)}" for k, x in v.items())
        return f"{v:g}" if isinstance(v, float) else str(v)
    return f"{title}: " + ", ".join(f"{k} {text(v)}" for k, v in settings.items())


def save_samples(base: Path, images: np.ndarray, labels: np.ndarray, settings: dict, class_names: list[str],
                 columns: int, title: str = "samples") -> list[Path]:
    """`elt sample`'s files: BASE.npz (images, labels, the settings as text) and a grid of `columns`
    columns headed by their class names with `title` (the run) and the settings in a caption strip —
    BASE.png, or BASE.gif (and BASE.mp4) for clips. Every file is written atomically. Returns the files
    written."""
    base = Path(base)
    save_arrays(with_ext(base, ".npz"), images=images, labels=np.asarray(labels, np.int64),
                settings=np.array(str(settings)))
    cols = max(1, min(columns, len(images)))
    rows = len(images) // cols
    caption = caption_text(title, settings)
    labels_ = Labels(cols=[class_names[int(c)] for c in labels[:cols]], caption=caption)
    shown = images[: rows * cols]
    if images.ndim == 5:
        grids = save_video_grid(shown, rows, cols, with_ext(base, ".gif"), scale=2 if images.shape[2] <= 64 else 1,
                                labels=labels_)
    else:
        grids = [save_grid(shown, rows, cols, with_ext(base, ".png"), scale=2 if images.shape[1] <= 32 else 1,
                           labels=labels_)]
    return [with_ext(base, ".npz"), *grids]
