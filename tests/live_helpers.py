"""Helpers of the live-mode tests: a playlist on the tiny random CLIP, and a runner on it."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from pathlib import Path

import torch
from PIL import Image

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


def wait_for(predicate, seconds: float = 120.0):
    """Poll ``predicate`` until it gives something true; fail after ``seconds``."""
    end = time.time() + seconds
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def status_of(folder: Path, pid: int) -> dict | None:
    """The status file if the process ``pid`` wrote it."""
    try:
        data = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return data if data["pid"] == pid else None


def check_files_whole(folder: Path) -> None:
    """Every file a reader could open is complete: PNGs decode, JSON parses, checkpoints load."""
    for png in [folder / "current.png", *(folder / "frames").glob("*.png")]:
        if png.exists():
            with Image.open(png) as image:
                image.load()
    if (folder / "status.json").exists():
        json.loads((folder / "status.json").read_text())
    for checkpoint in (folder / "state").glob("checkpoint-*.pt"):
        torch.load(checkpoint, weights_only=True)


def kill_and_resume(spawn, folder: Path, every: int, kills: int, rng: random.Random) -> list[int]:
    """Start a worker (``spawn() -> (pid, join)``), SIGKILL it at a random moment, ``kills`` times. Each
    restart must resume from the newest checkpoint (the log says so, the status follows), leave no
    temporary file, lose at most ``every`` steps of what the status last showed, and every file must be
    whole after each kill. Returns the steps resumed at."""
    last_seen, resumed_at = 0, []
    for _ in range(kills):
        checkpoints = sorted((folder / "state").glob("checkpoint-*.pt")) if folder.exists() else []
        expected = int(checkpoints[-1].stem.split("-")[1]) if checkpoints else None
        pid, join = spawn()
        first = wait_for(lambda: status_of(folder, pid), 600.0)
        # A killed writer's temporary files are gone; the new worker's own (named with its pid, mid-write
        # now that it writes every step) may exist for an instant.
        leftovers = [p for p in [*folder.glob(".*.tmp"), *(folder / "frames").glob(".*.tmp")] if f"-{pid}-" not in p.name]
        assert not leftovers, leftovers
        if expected is not None:
            resumed = [line for line in (folder / "live.log").read_text().splitlines() if "resumed from" in line]
            assert resumed[-1].endswith(f"resumed from checkpoint-{expected:010d}.pt at step {expected}")
            assert first["step"] >= expected
            assert last_seen - expected <= every, (last_seen, expected)  # progress lost: one interval at most
            resumed_at.append(expected)
        time.sleep(rng.uniform(0.05, 1.0))
        os.kill(pid, signal.SIGKILL)
        join()
        last_seen = json.loads((folder / "status.json").read_text())["step"]
        check_files_whole(folder)
    assert resumed_at == sorted(resumed_at)
    return resumed_at
