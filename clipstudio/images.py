"""Image files: reading into tensors, and atomic PNG writing with the run's settings in a text chunk."""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .errors import ClipstudioError
from .resources import clean_stale_tmp, tmp_prefix

SETTINGS_KEY = "clipstudio"


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a (1, 3, H, W) float tensor in [0, 1]; unreadable files are a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ClipstudioError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ClipstudioError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def require_finite_image(images: torch.Tensor) -> torch.Tensor:
    """``images`` unchanged if every value is finite; else a one-line error (non-finite values never reach a
    file: clamping would turn NaN into black and exit 0)."""
    if not torch.isfinite(images.detach()).all():
        raise ClipstudioError("the image holds NaN or inf values (a non-finite setting or a diverged run); "
                              "nothing was written")
    return images


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) or (3, H, W) tensor in [0, 1] as an 8-bit RGB image; NaNs never reach a file."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    require_finite_image(image)
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if ``path`` cannot be written as a regular file.

    Anything that exists and is not a regular file (a directory, a device node such as ``/dev/null``, a FIFO,
    a socket) is refused: an atomic write would replace it. Stale temporary files of our own that killed runs
    left in the folder are removed here, at the start of a run.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ClipstudioError(f"cannot write output {path}: it is a directory")
    if os.path.lexists(path):
        try:
            mode = path.stat().st_mode
        except OSError as err:  # a dangling symlink, a loop, no permission
            raise ClipstudioError(f"cannot write output {path}: {err.strerror or err}") from None
        if not stat.S_ISREG(mode):
            raise ClipstudioError(f"cannot write output {path}: it exists and is not a regular file "
                                  f"({_file_kind(mode)})")
    if not parent.is_dir():
        raise ClipstudioError(f"cannot write output {path}: folder {parent} does not exist")
    clean_stale_tmp(parent)
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=tmp_prefix(path), suffix=".tmp", delete=True):
            pass
    except OSError as err:
        raise ClipstudioError(f"cannot write output {path}: {err.strerror or err}") from None
    return path


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "a special file"


def _umask() -> int:
    """The process umask (reading it means setting it; done once per write, on the main thread's behalf)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path`` and move it into place.

    A failure leaves any old file untouched and no half-written file behind. The file gets the permissions
    a plain ``open()`` would give it (0666 minus the umask), not the 0600 of a temporary file. A failed write
    (a full disk) is a one-line error.
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
            raise ClipstudioError(f"cannot write output {path}: {err.strerror or err}") from None
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a torn file: a checkpoint survives a power cut mid-write."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def save_png(image: Image.Image, path: str | os.PathLike, settings: dict[str, Any] | None = None) -> Path:
    """Write ``image`` as PNG atomically, with ``settings`` as JSON in a ``clipstudio`` text chunk."""
    info = PngImagePlugin.PngInfo()
    if settings is not None:
        info.add_text(SETTINGS_KEY, json.dumps(settings, sort_keys=True))
        if settings.get("settings", {}).get("prompt"):
            info.add_text("Description", settings["settings"]["prompt"])
    try:
        return atomic_write(path, lambda handle: image.save(handle, format="PNG", pnginfo=info))
    except OSError as err:
        raise ClipstudioError(f"cannot write output {path}: {err.strerror or err}") from None


def read_png_run_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The run settings (``settings``) that :func:`save_png` stored in a PNG, checked to be a mapping."""
    settings = read_png_settings(path).get("settings", {})
    if not isinstance(settings, dict):
        raise ClipstudioError(f"{path} has corrupt clipstudio settings (settings is a {type(settings).__name__})")
    return settings


def read_png_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings JSON that :func:`save_png` stored in a PNG."""
    path = Path(path)
    if not path.is_file():
        raise ClipstudioError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            text = img.text.get(SETTINGS_KEY) if hasattr(img, "text") else None
    except (OSError, ValueError) as err:
        raise ClipstudioError(f"cannot read image {path}: {err}") from None
    if text is None:
        raise ClipstudioError(f"{path} holds no clipstudio settings (was it made by clipstudio?)")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ClipstudioError(f"{path} has corrupt clipstudio settings") from None
    if not isinstance(data, dict):
        raise ClipstudioError(f"{path} has corrupt clipstudio settings (a {type(data).__name__}, not a mapping)")
    return data
