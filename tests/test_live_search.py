"""The live loop searches the generator's discrete choices once per item, when the item reaches its prompt:
counted on the tiny random CLIP, exact across a resume, off with ``search: false``; and on the embedded
shapes-guide the second item of a playlist ends as a picture the shapes checker accepts."""
import logging

import pytest
import torch

from clipstudio.live.playlist import load_playlist
from clipstudio.live.runner import LiveRunner
from clipstudio.studio import Studio
from live_helpers import fast_options, started_runner

TINY_PRIMITIVES = ("{clip: [clipstudio-test-tiny:random], generator: primitives, width: 32, height: 32, cutn: 2, "
                   "generator_options: {count: 1, palette: '#ff0000,#00ff00,#0000ff', grid: [0.3, 0.7], "
                   "search_sizes: [0.3, 0.5]}, search: 1, search_restarts: 2, search_cutn: 2}")


def primitives_playlist(path, extra=""):
    path.write_text(f"settings: {TINY_PRIMITIVES}\nsteps: 4\ntransition: 2\n{extra}\n"
                    'prompts: ["a red circle", {prompt: "a green square", transition: 0}, "a blue ring"]\n')
    return path


@pytest.fixture
def searches(monkeypatch):
    """The sweeps of each Studio.search call."""
    calls = []
    original = Studio.search

    def counting(self, sweeps, restarts=1):
        calls.append(sweeps)
        return original(self, sweeps, restarts)

    monkeypatch.setattr(Studio, "search", counting)
    return calls


def run_counting(runner, steps, calls):
    """Step ``steps`` times; the runner's total step at each search."""
    at = []
    for _ in range(steps):
        before = len(calls)
        runner.step()
        at.extend([runner.total - 1] * (len(calls) - before))
    return at


def test_one_search_per_item_when_its_transition_ends(tmp_path, searches):
    runner = started_runner(tmp_path, primitives_playlist(tmp_path / "p.yaml"))
    at = run_counting(runner, 12, searches)
    # item 1 at its first step (nothing to blend from), item 2 at its first (transition 0), item 3 after 2 blending
    assert at == [0, 4, 8 + 2]
    assert [p.text for p in runner.applied] == ["a blue ring"] and runner.studio.searched


def test_each_search_hands_its_freed_memory_back(tmp_path, searches, monkeypatch):
    """A run of weeks searches once per item; the search's large batches are given back to the kernel right after
    (glibc keeps them otherwise, and the process grew by about 7 MB an item)."""
    import clipstudio.live.runner as runner_module

    released = []
    monkeypatch.setattr(runner_module, "release_freed_memory", lambda: released.append(len(searches)) or True)
    runner = started_runner(tmp_path, primitives_playlist(tmp_path / "p.yaml"))
    run_counting(runner, 12, searches)
    assert len(searches) == 3 and released == [1, 2, 3]


def test_search_false_turns_it_off_for_one_item_or_all(tmp_path, searches):
    path = tmp_path / "p.yaml"
    path.write_text(f"settings: {TINY_PRIMITIVES}\nsteps: 2\ntransition: 1\n"
                    'prompts: ["a red circle", {prompt: "a green square", search: false}]\n')
    assert [i.search for i in load_playlist(path).items] == [True, False]
    assert run_counting(started_runner(tmp_path, path), 4, searches) == [0]
    path.write_text(path.read_text().replace("steps: 2", "search: false\nsteps: 2"))
    assert not any(i.search for i in load_playlist(path).items)


def test_a_resumed_run_neither_searches_twice_nor_skips_a_search(tmp_path, searches):
    straight = started_runner(tmp_path / "a", primitives_playlist(tmp_path / "p.yaml"))
    assert run_counting(straight, 11, searches) == [0, 4, 10]
    searches.clear()
    # stopped (checkpointed) at 2, 4 (the next item's search not done yet) and 10 (item 3's search done)
    resumed_at, total = [], []
    runner = started_runner(tmp_path / "b", tmp_path / "p.yaml")
    for stop in (2, 4, 10, 11):
        total += run_counting(runner, stop - runner.total, searches)
        runner.close()
        runner = LiveRunner(tmp_path / "p.yaml", tmp_path / "b" / "out", fast_options(),
                            logging.getLogger("clipstudio.live.test"))
        runner.start()
        resumed_at.append(runner.total)
    assert resumed_at == [2, 4, 10, 11]
    assert total == [0, 4, 10]
    assert runner.position.to_dict() == straight.position.to_dict()
    assert torch.equal(runner.studio.image_tensor(), straight.studio.image_tensor())


@pytest.mark.slow
def test_shapes_guide_playlist_reaches_the_second_prompt(tmp_path):
    from clipstudio.worlds.shapes.check import check_image

    second = "a yellow square on a green background"
    path = tmp_path / "p.yaml"
    path.write_text("recipe: shapes\nsettings: {device: cpu}\nsteps: 20\ntransition: 5\nloop: 1\n"
                    f'prompts: ["a red circle on a blue background", "{second}"]\n')
    runner = LiveRunner(path, tmp_path / "out", fast_options(checkpoint_every=100, frame_every=100,
                        numbered_every=100), logging.getLogger("clipstudio.live.test"))
    runner.start()
    assert runner.run() == "finished"
    result = check_image(runner.studio.image(), second)
    assert result.passed, result.failures
