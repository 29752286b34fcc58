"""Slow checks of the live mode through the real command: a soak of 5,000 steps of the shapes world's default
recipe (memory flat, frames within budget) and kill -9 of the worker process at random points."""
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from live_helpers import kill_and_resume, write_playlist

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SOAK_PLAYLIST = """# soak: the shapes world's default recipe at 32 px, 5 x 1000 steps, one pass
recipe: shapes
settings: {width: 32, height: 32}
steps: 1000
transition: 50
loop: 1
prompts:
  - "a red circle on a blue background"
  - "a green square"
  - "a yellow triangle on a black background"
  - "a purple circle"
  - "a white square on a red background"
"""


def live_command(playlist, folder, *options):
    return [sys.executable, "-m", "clipstudio.cli", "live", str(playlist), "--out", str(folder), "--threads", "1",
            *options]


def environment():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_soak_5000_steps_memory_and_disk_stay_flat(tmp_path):
    playlist, folder = tmp_path / "playlist.yaml", tmp_path / "out"
    playlist.write_text(SOAK_PLAYLIST)
    budget_mb, keep = 2, 200
    subprocess.run(live_command(playlist, folder, "--numbered-every", "10", "--keep-frames", str(keep),
                                "--frames-budget-mb", str(budget_mb), "--log-every", "250"),
                   check=True, env=environment(), timeout=6 * 3600)
    rss = {int(m.group(1)): float(m.group(2)) for m in
           re.finditer(r"step (\d+): [\d.]+ steps/s, rss (\d+) MiB", (folder / "live.log").read_text())}
    assert max(rss) == 5000 and (rss[5000] - rss[500]) / rss[500] < 0.05, rss
    status = json.loads((folder / "status.json").read_text())
    assert status["step"] == 5000 and status["state"] == "finished"
    frames = list((folder / "frames").iterdir())
    assert len(frames) <= keep and sum(f.stat().st_size for f in frames) <= budget_mb * 2**20
    assert len(list((folder / "state").glob("checkpoint-*.pt"))) == 2


def test_kill_9_of_the_real_command_always_resumes(tmp_path):
    playlist, folder = write_playlist(tmp_path / "p.yaml"), tmp_path / "out"
    command = live_command(playlist, folder, "--worker", "--frame-every", "1", "--numbered-every", "1",
                           "--keep-frames", "5", "--checkpoint-every", "4", "--poll-seconds", "0")

    def spawn():
        process = subprocess.Popen(command, env={**environment(), "CLIPSTUDIO_MODEL_CONFIGS":
                                                 str(REPO / "tests" / "model_configs")}, stderr=subprocess.DEVNULL)
        return process.pid, process.wait

    resumed = kill_and_resume(spawn, folder, every=4, kills=12, rng=random.Random(1414))
    assert len(resumed) == 11 and resumed[-1] > 0
