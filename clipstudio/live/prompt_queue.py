"""Prompts queued from the web page: ``queue.json`` in the run's folder, changed under a file lock by the
server (which appends) and the worker (which takes the oldest when an item ends)."""
from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import ClipstudioError
from ..images import atomic_write
from .playlist import MAX_PROMPT_CHARS, check_prompt

QUEUE = "queue.json"
MAX_QUEUE = 10
MAX_QUEUED_STEPS = 5000


class QueueFull(ClipstudioError):
    """The queue already holds its most prompts."""


class PromptQueue:
    """A small persistent FIFO of ``{"prompt", "steps", "queued"}`` entries."""

    def __init__(self, folder: str | Path, max_items: int = MAX_QUEUE, max_chars: int = MAX_PROMPT_CHARS):
        self.path = Path(folder) / QUEUE
        self.lock_path = Path(folder) / ".queue.lock"
        self.max_items, self.max_chars = max_items, max_chars

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[dict[str, Any]]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("prompt"), str)] \
            if isinstance(entries, list) else []

    def _write(self, entries: list[dict[str, Any]]) -> None:
        text = json.dumps(entries).encode()
        atomic_write(self.path, lambda handle: handle.write(text))

    def push(self, prompt: Any, steps: Any = None) -> int:
        """Queue a prompt (checked: length, syntax); returns its place in the queue (1 is next)."""
        check_prompt(prompt, self.max_chars)
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or not 1 <= steps <= MAX_QUEUED_STEPS):
            raise ClipstudioError(f"steps must be a whole number from 1 to {MAX_QUEUED_STEPS}")
        with self._locked() as entries:
            if len(entries) >= self.max_items:
                raise QueueFull(f"the queue is full ({self.max_items} prompts); try again later")
            entries.append({"prompt": prompt, "steps": steps, "queued": time.time()})
            self._write(entries)
            return len(entries)

    def pop(self) -> dict[str, Any] | None:
        """The oldest queued prompt, removed from the queue; None when it is empty."""
        if not self.path.is_file():
            return None
        with self._locked() as entries:
            if not entries:
                return None
            self._write(entries[1:])
            return entries[0]

    def __len__(self) -> int:
        return len(self._read())
