"""Live installation mode (``clipstudio live``): a playlist played for days into a folder of frames, with a
status file, checkpoints it resumes from, a web page and a watchdog. It builds on :class:`Studio`, the
recipes and the atomic writers; nothing here is imported by the core."""
from __future__ import annotations

from .playlist import Item, Playlist, PlaylistWatcher, blend, load_playlist
from .runner import LiveOptions, LiveRunner, run_worker

__all__ = ["Item", "LiveOptions", "LiveRunner", "Playlist", "PlaylistWatcher", "blend", "load_playlist", "run_worker"]
