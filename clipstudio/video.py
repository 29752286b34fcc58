"""Frames to video files through imageio: ``.mp4`` (H.264 through imageio-ffmpeg) and ``.gif`` (Pillow).

Videos are written to a temporary file beside the target and moved into place, so a failure never leaves a
torn video, nor destroys an older one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ClipstudioError
from .images import _umask, check_writable

VIDEO_SUFFIXES = (".mp4", ".gif")


def check_video_path(path: str | os.PathLike) -> Path:
    """A writable ``.mp4`` or ``.gif`` path (checked before any work is done)."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ClipstudioError(f"video output must end in {' or '.join(VIDEO_SUFFIXES)}, got {path.name}")
    if path.suffix.lower() == ".mp4":
        _ffmpeg_writer_available()
    return check_writable(path)


def _ffmpeg_writer_available() -> None:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ModuleNotFoundError:
        raise ClipstudioError("writing .mp4 needs the 'imageio-ffmpeg' package: pip install imageio-ffmpeg "
                              "(or write a .gif)") from None


def _as_array(frame: np.ndarray | Image.Image | str | os.PathLike) -> np.ndarray:
    if isinstance(frame, (str, os.PathLike)):
        with Image.open(frame) as img:
            return np.asarray(img.convert("RGB"))
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    return np.asarray(frame, dtype=np.uint8)


def write_video(frames: Iterable[np.ndarray | Image.Image | str | os.PathLike], path: str | os.PathLike,
                fps: float = 12.0, quality: float = 7.0) -> Path:
    """Write frames (HxWx3 uint8 arrays, PIL images or image files) as ``path`` (.mp4 or .gif), atomically.

    ``quality`` (0 to 10) is imageio-ffmpeg's H.264 quality; GIFs are lossless palettes and ignore it. An mp4's
    sides must be even (yuv420p), so odd-sized frames are padded by one pixel.
    """
    import imageio.v2 as imageio

    path = check_video_path(path)
    suffix = path.suffix.lower()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    count = 0
    try:
        if suffix == ".mp4":
            writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, quality=quality,
                                        macro_block_size=1, codec="libx264", pixelformat="yuv420p")
        else:
            writer = imageio.get_writer(tmp, format="GIF", mode="I", duration=1000.0 / fps, loop=0)
        with writer:
            for frame in frames:
                writer.append_data(_even(_as_array(frame)) if suffix == ".mp4" else _as_array(frame))
                count += 1
        if not count:
            raise ClipstudioError(f"no frames to write to {path}")
        os.chmod(tmp, 0o666 & ~_umask())  # what open() would give, not the temporary file's 0600 (as for PNGs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad a frame to even sides by repeating its last row/column (H.264 with yuv420p needs even sides)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frame


def read_video(path: str | os.PathLike) -> list[np.ndarray]:
    """All frames of a video file as HxWx3 uint8 arrays (for tests and checks)."""
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise ClipstudioError(f"video not found: {path}")
    fmt = "FFMPEG" if path.suffix.lower() == ".mp4" else "GIF"
    with imageio.get_reader(path, format=fmt) as reader:
        return [np.asarray(frame)[..., :3] for frame in reader]


def frame_files(folder: str | os.PathLike) -> Sequence[Path]:
    """The numbered PNG frames of an animation folder, in order."""
    return sorted(Path(folder).glob("frame-*.png"))
