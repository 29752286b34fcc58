"""The files of a live run in its folder, each written atomically (a power cut leaves the old file or the
new one, never half of one):

- ``current.png`` and ``frames/NNNNNNNNNN.png`` (numbered by total step, pruned to a count and a disk budget);
- ``status.json``; ``state/checkpoint-NNNNNNNNNN.pt`` (the newest two kept); ``state/heartbeat``;
- ``queue.json`` (prompts queued from the web page, see :mod:`.prompt_queue`); ``live.log``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..checkpoints import load_checkpoint
from ..images import atomic_torch_save, atomic_write, save_png

CURRENT = "current.png"
STATUS = "status.json"
FRAMES = "frames"
STATE = "state"
HEARTBEAT = "heartbeat"
FRAME_NAME = re.compile(r"^\d{10}\.png$")
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d{10})\.pt$")
TEMPORARY = re.compile(r"^\..+\.tmp$")  # what images.atomic_write leaves when killed mid-write


def remove_temporaries(folder: Path, keep_prefix: str = ".queue.json.") -> int:
    """Delete the hidden temporary files an atomic write killed midway left behind; returns how many."""
    removed = 0
    for sub in (folder, folder / FRAMES, folder / STATE):
        if not sub.is_dir():
            continue
        for entry in os.scandir(sub):
            if TEMPORARY.match(entry.name) and not entry.name.startswith(keep_prefix):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """JSON written atomically."""
    text = json.dumps(data, indent=1, sort_keys=True).encode()
    return atomic_write(path, lambda handle: handle.write(text))


class FrameStore:
    """``current.png`` and numbered frames; the oldest numbered frames go once there are more than ``keep``
    or they take more than ``budget_bytes``."""

    def __init__(self, folder: Path, keep: int, budget_bytes: int):
        self.folder, self.frames = folder, folder / FRAMES
        self.frames.mkdir(parents=True, exist_ok=True)
        self.keep, self.budget = keep, budget_bytes
        entries = sorted((e.name, e.stat().st_size) for e in os.scandir(self.frames) if FRAME_NAME.match(e.name))
        self.kept: deque[tuple[str, int]] = deque(entries)
        self.bytes = sum(size for _, size in entries)

    def write_current(self, image: Image.Image, metadata: dict[str, Any]) -> Path:
        return save_png(image, self.folder / CURRENT, metadata)

    def write_numbered(self, image: Image.Image, step: int, metadata: dict[str, Any]) -> Path:
        name = f"{step:010d}.png"
        path = save_png(image, self.frames / name, metadata)
        self.kept = deque(entry for entry in self.kept if entry[0] != name)  # rewritten after a resume
        self.kept.append((name, path.stat().st_size))
        self.bytes = sum(size for _, size in self.kept)
        self.prune()
        return path

    def prune(self) -> None:
        while self.kept and (len(self.kept) > self.keep or self.bytes > self.budget):
            name, size = self.kept.popleft()
            (self.frames / name).unlink(missing_ok=True)
            self.bytes -= size


class CheckpointStore:
    """Run checkpoints named by total step; the newest ``keep`` stay, so a corrupt newest one falls back
    to the one before."""

    def __init__(self, folder: Path, log: logging.Logger, keep: int = 2):
        self.folder, self.log, self.keep = folder / STATE, log, keep
        self.folder.mkdir(parents=True, exist_ok=True)

    def paths(self) -> list[Path]:
        """Checkpoints, newest first."""
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = atomic_torch_save(state, self.folder / f"checkpoint-{step:010d}.pt")
        for old in self.paths()[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def load(self, restore: Callable[[dict[str, Any]], None]) -> Path | None:
        """Give the newest checkpoint that loads to ``restore``; unreadable ones are set aside (renamed
        ``.corrupt``) and logged. None when there is none."""
        for path in self.paths():
            try:
                state = load_checkpoint(path)  # weights-only; a pickle of anything else is refused
                restore(state)
                return path
            except Exception as err:  # a torn, corrupt or foreign file: fall back to the one before
                why = " ".join(str(err).split())[:200] or type(err).__name__
                self.log.warning("checkpoint %s cannot be loaded (%s); trying the one before", path.name, why)
                for stale in self.folder.glob("*.corrupt"):
                    stale.unlink(missing_ok=True)
                path.rename(path.with_name(path.name + ".corrupt"))
        return None


def touch(path: Path, content: str = "") -> None:
    """The heartbeat: a small file whose modification time says the loop is alive."""
    try:
        with open(path, "w") as handle:
            handle.write(content)
    except OSError:
        pass


def rss_megabytes() -> float:
    """Resident memory of this process, in MiB (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
