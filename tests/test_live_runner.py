"""The live loop on the tiny random CLIP: frames and status, pruning, resuming, corrupt checkpoints,
transitions, recovery from bad steps, queued prompts, SIGTERM and kill -9 at random points."""
import json
import logging
import multiprocessing
import os
import random
import signal
import time

import pytest
import torch
from PIL import Image

from clipstudio.live.runner import LiveRunner, run_worker
from clipstudio.live.store import FrameStore
from clipstudio.studio import StepInfo, Studio
from live_helpers import fast_options, kill_and_resume, started_runner, status_of, wait_for, write_playlist


def status(runner) -> dict:
    return json.loads((runner.folder / "status.json").read_text())


def test_frames_status_and_pruning(tmp_path):
    runner = started_runner(tmp_path)
    runner.run(max_steps=10)
    out = runner.folder
    assert Image.open(out / "current.png").size == (32, 32)
    frames = sorted(p.name for p in (out / "frames").iterdir())
    assert frames == [f"{n:010d}.png" for n in (4, 6, 8, 10)]  # every 2 steps, the newest 4 kept
    s = status(runner)
    assert s["state"] == "stopped" and s["step"] == 10 and s["prompt"] in ("a red circle", "a green square")
    assert s["steps_per_second"] > 0 and s["uptime_seconds"] >= 0 and s["last_error"] is None
    assert s["frames"] == 4 and s["rss_mb"] > 0
    assert [p.name for p in runner.checkpoints.paths()] == ["checkpoint-0000000010.pt", "checkpoint-0000000009.pt"]


def test_frame_budget_in_bytes(tmp_path):
    image = Image.effect_noise((32, 32), 64).convert("RGB")
    one = FrameStore(tmp_path / "one", keep=100, budget_bytes=10**6).write_numbered(image, 1, {}).stat().st_size
    budget = int(2.5 * one)
    store = FrameStore(tmp_path, keep=100, budget_bytes=budget)
    for step in range(1, 6):
        store.write_numbered(image, step, {})
    on_disk = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert on_disk == ["0000000004.png", "0000000005.png"] and store.bytes <= budget
    assert FrameStore(tmp_path, keep=100, budget_bytes=budget).bytes == store.bytes  # found again on restart


def test_resume_keeps_counting(tmp_path):
    first = started_runner(tmp_path)
    first.run(max_steps=7)
    position = first.position.to_dict()
    second = started_runner(tmp_path, first.playlist_path)
    assert second.total == 7 and second.position.to_dict() == position
    assert torch.equal(second.studio.image_tensor(), first.studio.image_tensor())
    second.run(max_steps=2)
    assert status(second)["step"] == 9


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    first = started_runner(tmp_path)
    first.run(max_steps=5)  # checkpoints at 3 and 5
    newest = first.checkpoints.paths()[0]
    newest.write_bytes(newest.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="clipstudio.live.test"):
        second = started_runner(tmp_path, first.playlist_path)
    assert second.total == 3
    assert len(caplog.records) == 1 and "cannot be loaded" in caplog.records[0].getMessage()
    assert newest.with_name(newest.name + ".corrupt").exists()
    second.run(max_steps=3)
    assert [p.name for p in second.checkpoints.paths()] == ["checkpoint-0000000006.pt", "checkpoint-0000000003.pt"]


def test_transition_blends_old_and_new_prompt_weights(tmp_path):
    runner = started_runner(tmp_path)  # 6 steps an item, 3 of them blending
    seen = []
    for _ in range(10):
        runner.step()
        seen.append({p.text: round(p.weight, 3) for p in runner.applied})
    assert seen[0] == {"a red circle": 1.0}
    blending = [s for s in seen if len(s) == 2]
    assert len(blending) == 2  # steps 1 and 2 of the second item blend; step 3 reaches the new prompt
    assert all(abs(sum(s.values()) - 1.0) < 1e-6 for s in blending)
    assert blending[0]["a green square"] < blending[1]["a green square"] < 1.0
    assert seen[-1] == {"a green square": 1.0}


def test_a_step_error_restores_the_checkpoint_and_lowers_the_lr(tmp_path, monkeypatch, caplog):
    runner = started_runner(tmp_path)
    runner.run(max_steps=4)  # checkpoint at 3
    runner.stop_requested = False
    original = Studio.step
    calls = {"n": 0}

    def failing_once(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory\nsecond line")
        return original(self)

    monkeypatch.setattr(Studio, "step", failing_once)
    with caplog.at_level(logging.WARNING, logger="clipstudio.live.test"):
        runner.step()
    assert runner.total == 4  # the exit checkpoint of step 4
    assert runner.studio.config.lr == pytest.approx(0.025) and runner.position.lr_scale == 0.5
    [record] = caplog.records
    assert "RuntimeError: out of memory second line" in record.getMessage() and "lr x0.5" in record.getMessage()
    assert status(runner)["last_error"]["message"].startswith("step 4: RuntimeError")
    runner.step()
    assert runner.total == 5


def test_repeated_failures_on_one_prompt_skip_to_the_next(tmp_path, monkeypatch, caplog):
    runner = started_runner(tmp_path, max_failures=3)
    original = Studio.step

    def nan_on_red(self):
        if runner.position.item.prompt == "a red circle" and runner.position.item_step >= 1:
            return StepInfo(self.step_index, {}, float("nan"), True, "loss is not finite")
        return original(self)

    monkeypatch.setattr(Studio, "step", nan_on_red)
    with caplog.at_level(logging.WARNING, logger="clipstudio.live.test"):
        for _ in range(6):  # good, bad, good (from the checkpoint, lr halved), bad, good, bad: skipped
            runner.step()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "skipping to the next prompt" in messages[-1]
    assert runner.position.item.prompt == "a green square" and runner.position.lr_scale == 1.0
    assert all(torch.isfinite(p).all() for p in runner.studio.generator.parameters())


def test_queued_prompt_plays_next_then_the_playlist_goes_on(tmp_path):
    runner = started_runner(tmp_path)
    runner.queue.push("a blue triangle", 2)
    played = []
    for _ in range(13):  # 6 red, 2 queued, then green (an item switches on its last step)
        runner.step()
        played.append(runner.position.item.prompt)
    order = [p for i, p in enumerate(played) if i == 0 or played[i - 1] != p]
    assert order == ["a red circle", "a blue triangle", "a green square"]
    assert len(runner.queue) == 0 and played.count("a blue triangle") == 2


def test_loop_n_times_finishes(tmp_path):
    playlist = write_playlist(tmp_path / "p.yaml", '[{prompt: a cat, steps: 2}, {prompt: a dog, steps: 2}]', "loop: 2")
    runner = started_runner(tmp_path, playlist)
    assert runner.run() == "finished" and runner.total == 8
    assert status(runner)["state"] == "finished"
    again = started_runner(tmp_path, playlist)  # a restart after the end stays finished
    assert again.finished and again.run() == "finished" and again.total == 8


# -- real processes: SIGTERM and kill -9 (forked from this process, which has torch imported already) --

def _worker(playlist, folder, options):
    os._exit(run_worker(playlist, folder, options, threads=1))


def test_sigterm_finishes_the_step_checkpoints_and_exits_0(tmp_path):
    playlist, folder = write_playlist(tmp_path / "p.yaml"), tmp_path / "out"
    options = fast_options(frame_every=1, checkpoint_every=1000)
    child = multiprocessing.get_context("fork").Process(target=_worker, args=(playlist, folder, options))
    child.start()
    wait_for(lambda: (status_of(folder, child.pid) or {}).get("step", 0) >= 3)
    os.kill(child.pid, signal.SIGTERM)
    child.join(60)
    assert child.exitcode == 0
    final = json.loads((folder / "status.json").read_text())
    assert final["state"] == "stopped"
    assert final["step"] >= 3 and (folder / "state" / f"checkpoint-{final['step']:010d}.pt").exists()


def test_kill_9_at_random_points_always_resumes(tmp_path):
    """Ten SIGKILLs at random moments of a forked worker (frames, status and checkpoints are written every
    few steps, so kills land mid-write): see :func:`live_helpers.kill_and_resume`."""
    playlist, folder = write_playlist(tmp_path / "p.yaml"), tmp_path / "out"
    options = fast_options(frame_every=1, numbered_every=1, keep_frames=5, checkpoint_every=4)
    context = multiprocessing.get_context("fork")

    def spawn():
        child = context.Process(target=_worker, args=(playlist, folder, options))
        child.start()
        return child.pid, lambda: child.join(30)

    resumed = kill_and_resume(spawn, folder, every=4, kills=10, rng=random.Random(14))
    assert len(resumed) == 9 and resumed[-1] > 0
