"""Live playlists: the smallest form, defaults, one-line errors, blending, and live edits (a dozen broken
files: the run carries on with the old playlist and logs exactly one line for each)."""
import logging
import math

import pytest

from clipstudio.errors import ClipstudioError
from clipstudio.guide.prompts import Prompt
from clipstudio.live.playlist import DEFAULT_TRANSITION, PlaylistWatcher, blend, load_playlist
from live_helpers import TINY_SETTINGS, started_runner, write_playlist


def test_smallest_form_uses_the_shapes_default_recipe(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text('prompts:\n  - {prompt: "a red circle on a blue background", steps: 200}\n  - "a green square"\n')
    playlist = load_playlist(path)
    first, second = playlist.items
    assert (first.prompt, first.steps, first.transition) == ("a red circle on a blue background", 200, DEFAULT_TRANSITION)
    assert first.settings["generator"] == "primitives" and first.settings["clip"] == ["shapes-guide"]
    assert first.settings["schedule"] == "constant"  # a live run has no end to decay toward
    assert second.steps == 200 and playlist.loop is None


def test_items_may_name_a_recipe_and_settings(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("loop: 3\nsteps: 10\ntransition: 40\nprompts:\n"
                    "  - {prompt: a cat, recipe: shapes-pixels, settings: {width: 48}}\n"
                    "  - {prompt: a dog, transition: 2}\n")
    playlist = load_playlist(path)
    cat, dog = playlist.items
    assert cat.config().generator == "pixels" and cat.config().width == 48
    assert cat.transition == 10  # a transition never outlasts its item
    assert dog.transition == 2 and playlist.loop == 3


def test_blend_moves_weights_linearly():
    old, new = [Prompt("a cat", 2.0)], [Prompt("a dog"), Prompt("a cat", 1.0)]
    assert blend(old, new, 0.0) == [Prompt("a cat", 2.0)]
    halfway = {p.text: p.weight for p in blend(old, new, 0.5)}
    assert halfway == {"a cat": 1.5, "a dog": 0.5}
    assert {p.text: p.weight for p in blend(old, new, 1.0)} == {"a cat": 1.0, "a dog": 1.0}
    assert all(math.isinf(p.stop) for p in blend(old, new, 0.3))


BROKEN = {
    "yaml syntax": "prompts: [a red circle\n",
    "tab indentation": "prompts:\n\t- a red circle\n",
    "empty file": "",
    "a list, not a mapping": "- a red circle\n",
    "no prompts": "steps: 10\n",
    "empty prompts": "prompts: []\n",
    "negative steps": "prompts: [{prompt: a cat, steps: -5}]\n",
    "steps as words": "prompts: [{prompt: a cat, steps: many}]\n",
    "unknown key": "prompts: [{prompt: a cat, stepz: 10}]\n",
    "unknown recipe": "prompts: [{prompt: a cat, recipe: no-such-recipe}]\n",
    "empty prompt": "prompts: [{prompt: '', steps: 3}]\n",
    "bad loop": "loop: sometimes\nprompts: [a cat]\n",
    "bad setting type": "settings: {width: big}\nprompts: [a cat]\n",
    "unknown setting": "settings: {colour: red}\nprompts: [a cat]\n",
    "prompt too long": "prompts: [" + "a" * 400 + "]\n",
    "malformed weight": "prompts: ['a cat:1:x']\n",
    "not utf-8": b"prompts: [\xff\xfe caf\xe9]\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_playlist_is_one_line_error(tmp_path, name):
    path = tmp_path / "p.yaml"
    content = BROKEN[name]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ClipstudioError) as err:
        load_playlist(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_edits_keep_the_old_playlist_and_log_one_line_each(tmp_path, caplog):
    """A dozen and more broken edits while the run plays: it never stops, keeps its playlist, and logs one
    warning line per edit; a good edit afterwards is taken."""
    runner = started_runner(tmp_path)
    path = runner.playlist_path
    before = runner.playlist
    for name, content in sorted(BROKEN.items()):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="clipstudio.live.test"):
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
            step = runner.total
            runner.step()
            runner.step()  # the same bad file is not reported twice
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, (name, [r.getMessage() for r in caplog.records])
        message = warnings[0].getMessage()
        assert "\n" not in message and "keeping the previous playlist (2 items)" in message, message
        assert runner.total == step + 2 and runner.playlist is before
    write_playlist(path, '["a blue triangle"]')
    runner.step()
    assert [i.prompt for i in runner.playlist.items] == ["a blue triangle"]
    assert runner.position.item.prompt == "a blue triangle"  # blended to from what was showing


def test_watcher_waits_for_an_edit_to_settle(tmp_path):
    path = write_playlist(tmp_path / "p.yaml")
    watcher = PlaylistWatcher(path, load_playlist(path), logging.getLogger("t"), interval=0.0, settle=1.0)
    write_playlist(path, '["a blue triangle"]')
    path.write_text(path.read_text() + "\n")  # still being written
    assert watcher.poll(now=100.0) is None
    assert watcher.poll(now=100.5) is None
    assert [i.prompt for i in watcher.poll(now=101.2).items] == ["a blue triangle"]


def test_removed_playlist_is_one_line_and_playing_goes_on(tmp_path, caplog):
    runner = started_runner(tmp_path)
    runner.playlist_path.unlink()
    with caplog.at_level(logging.WARNING, logger="clipstudio.live.test"):
        for _ in range(3):
            runner.step()
    assert len(caplog.records) == 1 and "cannot read it" in caplog.records[0].getMessage()


def test_settings_line_is_valid_yaml():
    import yaml

    assert yaml.safe_load(TINY_SETTINGS)["width"] == 32
