"""Image files: reading into tensors, and atomic PNG writing with the run's settings in a text chunk."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .errors import ClipstudioError

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


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) or (3, H, W) tensor in [0, 1] as an 8-bit RGB image; NaNs never reach a file."""
    image = image.detach().float().cpu()
    if image.dim() == 4:
        image = image[0]
    if not torch.isfinite(image).all():
        raise ClipstudioError("the image holds NaN or inf values; nothing was written")
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ClipstudioError(f"cannot write output {path}: it is a directory")
    if not parent.is_dir():
        raise ClipstudioError(f"cannot write output {path}: folder {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".clipstudio-", delete=True):
            pass
    except OSError as err:
        raise ClipstudioError(f"cannot write output {path}: {err.strerror or err}") from None
    return path


def atomic_write(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path`` and move it into place.

    A failure leaves any old file untouched and no half-written file behind.
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
        return json.loads(text)
    except ValueError:
        raise ClipstudioError(f"{path} has corrupt clipstudio settings") from None
