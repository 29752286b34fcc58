"""Helpers of the live-mode tests: a playlist on the tiny random CLIP, and a runner on it."""
from __future__ import annotations

import logging
from pathlib import Path

from clipstudio.live.runner import LiveOptions, LiveRunner

TINY_SETTINGS = "{clip: [clipstudio-test-tiny:random], generator: pixels, width: 32, height: 32, cutn: 2}"


def write_playlist(path: Path, prompts: str = '["a red circle", "a green square"]', extra: str = "") -> Path:
    path.write_text(f"settings: {TINY_SETTINGS}\nsteps: 6\ntransition: 3\n{extra}\nprompts: {prompts}\n")
    return path


def fast_options(**changes) -> LiveOptions:
    """Everything due often, the playlist file looked at on every step."""
    values = dict(frame_every=2, numbered_every=2, keep_frames=4, checkpoint_every=3, poll_seconds=0.0,
                  settle_seconds=0.0, log_every=1000)
    values.update(changes)
    return LiveOptions(**values)


def started_runner(tmp_path: Path, playlist: Path | None = None, **changes) -> LiveRunner:
    playlist = playlist or write_playlist(tmp_path / "playlist.yaml")
    runner = LiveRunner(playlist, tmp_path / "out", fast_options(**changes), logging.getLogger("clipstudio.live.test"))
    runner.start()
    return runner
