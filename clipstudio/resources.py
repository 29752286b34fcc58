"""Resources a run needs, known before it starts: an estimate of its peak memory from its settings, the memory
the machine has free, stale temporary files of killed runs.

The estimate is deliberately simple (bytes per output pixel of each generator, bytes per guide-input pixel of
each cutout, a fixed base for the framework and models), measured on this project's CPU runs (see the
constants) and rounded up, so that a run that cannot fit fails in a second with one line naming the setting to
lower, instead of minutes later with an allocator traceback.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from .errors import ClipstudioError

GIB = 1024**3
# Peak bytes per output pixel, with autograd. pixels: measured (peak RSS of `generate --steps 2 --cutn 2` at
# 768 px minus that at 256 px, over the pixel difference): Fourier pixels 160 B/px, RGB pixels 125.
# primitives: the same measurement gave 600 B/px with the shapes recipe's search, but issue 11 saw one 19 GB
# block at 4096x4096 (1130 B/px: the search judges all options of a choice in one batch), so 1200. vqgan and
# latent decoders are estimated from their full-resolution activations (taming's decoder keeps ~128 channels x
# ~20 saved tensors at output size, in line with the lineage's reports of ~8 GB at 380x380 and ~16 GB at
# 600x600 with CLIP included).
BYTES_PER_PIXEL = {"pixels": 200, "primitives": 1_200, "vqgan": 30_000, "latent": 8_000}
DEFAULT_BYTES_PER_PIXEL = 8_000  # a generator registered later, unknown here: assume a decoder
# Peak bytes per guide-input pixel of each cutout, through the CLIP model and back (ViT-B/32 at 224 px: ~75 MB
# a cutout).
BYTES_PER_CUTOUT_PIXEL = 1_500
BASE_BYTES = GIB // 2  # torch, open_clip and the models' weights


def estimate_peak_bytes(width: int, height: int, cutn: int, guide_size: int, generator: str,
                        guides: int = 1) -> dict[str, int]:
    """Peak memory of a guided run, in bytes, by part: ``image`` (the generator at output size, a search's
    batch of options included), ``cutouts`` (the cutouts through each CLIP) and ``base``."""
    per_pixel = BYTES_PER_PIXEL.get(generator, DEFAULT_BYTES_PER_PIXEL)
    return {"image": per_pixel * width * height,
            "cutouts": guides * cutn * guide_size * guide_size * BYTES_PER_CUTOUT_PIXEL,
            "base": BASE_BYTES}


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for a run on ``device``: CUDA's free memory, else the smaller of MemAvailable and the
    cgroup's headroom; None when it cannot be read (then nothing is refused)."""
    if device.startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    found = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


def _cgroup_headroom() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if not limit.isdigit() or not used.isdigit():
        return None  # "max": no limit
    return max(int(limit) - int(used), 0)


# Which setting to lower for each part of the estimate.
_LOWER = {"image": "--size", "cutouts": "--cutn", "base": "--size"}


def check_fits(parts: dict[str, int], device: str = "cpu", available: int | None = None) -> None:
    """A one-line error when the estimated peak (``parts``) exceeds the free memory, naming what to lower."""
    available = available_bytes(device) if available is None else available
    need = sum(parts.values())
    if available is None or need <= available:
        return
    biggest = max(parts, key=parts.get)
    raise ClipstudioError(f"this run needs about {need / GIB:.1f} GiB but {available / GIB:.1f} GiB is free on "
                          f"{device}: lower {_LOWER[biggest]} (the {biggest} part is {parts[biggest] / GIB:.1f} GiB)")


# --- temporary files --------------------------------------------------------------------------------------

TMP_MARK = ".clipstudio-"
STALE_SECONDS = 15 * 60
_TMP_NAME = re.compile(r"^\..+\.clipstudio-(\d+)-[A-Za-z0-9_]+\.tmp$")


def tmp_prefix(path: Path) -> str:
    """The prefix of our temporary files beside ``path``: ``.NAME.clipstudio-PID-`` (then a random part and
    ``.tmp``), so a later run can recognise ours and tell whether their writer is still alive."""
    return f".{path.name}{TMP_MARK}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: str | os.PathLike, max_age: float = STALE_SECONDS) -> list[Path]:
    """Remove our temporary files in ``folder`` that a killed run or failed write left: those whose writer
    process is gone, or older than ``max_age`` seconds. Other files are never touched. Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for path in entries:
        match = _TMP_NAME.match(path.name)
        if not match:
            continue
        try:
            stat = path.lstat()
            if not path.is_file() or path.is_symlink():
                continue
            if _pid_alive(int(match.group(1))) and now - stat.st_mtime < max_age:
                continue
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


# glibc's mallopt parameters (malloc.h): freed heap above M_TRIM_THRESHOLD at the top goes back to the kernel;
# M_MMAP_MAX blocks at most are mapped on their own (those of at least the mapping threshold, up to 32 MiB).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_ABOVE = 2**31 - 1  # mallopt takes an int: 2 GiB


def keep_freed_memory() -> bool:
    """Ask the C library's malloc to keep freed memory for reuse instead of handing it back to the kernel.

    A guidance step allocates and frees hundreds of megabytes of activations. With glibc's defaults the largest
    blocks are mapped and unmapped on every step and the heap is trimmed after it, so every step touches fresh
    pages: the classic VQGAN+CLIP step on a CPU took 350 000 page faults and 0.8-1.9 s of system time in
    9-10 s (issue 15; the cost PyTorch's CPU tuning guide sends users to jemalloc or tcmalloc for). With no
    blocks mapped on their own and no trimming below 2 GiB of free heap, steps after the first few take none.
    The price is that the heap stays near its peak size while the process lives.

    Linux with glibc only (elsewhere nothing changes); ``CLIPSTUDIO_KEEP_FREED_MEMORY=0`` turns it off. Returns
    whether the settings took.
    """
    import ctypes

    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None or os.environ.get("CLIPSTUDIO_KEEP_FREED_MEMORY", "1") == "0":
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))


def release_freed_memory() -> bool:
    """Hand the C library's free memory back to the kernel now (glibc's ``malloc_trim(0)``), e.g. after a search
    whose large batches are done with. glibc returns little of its heap by itself, so a process that runs one
    search after another (a live installation's items) grew by about 7 MB an item, 992 -> 1127 MB over 20 items
    of the shapes world (issue 15's soak); trimmed after each search it stayed at 870-905 MB. Returns whether
    anything was released; False where there is no ``malloc_trim`` (not glibc)."""
    import ctypes

    trim = _libc_function("malloc_trim", [ctypes.c_size_t])
    return trim is not None and bool(trim(0))


def _libc_function(name: str, argtypes: list):
    """The process's own C library function ``name`` returning an int, on Linux; None elsewhere or if absent."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
