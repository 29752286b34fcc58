"""`clipstudio recipe`: list/show/run/dump, and every built-in recipe run for 2 steps on tiny models."""
from __future__ import annotations

import pytest
import yaml

from clipstudio import embedded
from clipstudio.animation import animate
from clipstudio.cli import main
from clipstudio.config import GenerateConfig
from clipstudio.recipes import (dump_recipe, is_animation, list_recipes, recipe_animation, recipe_config,
                                recipe_settings)
from clipstudio.studio import Studio
from clipstudio.video import read_video
from generator_fixtures import TINY_GENERATOR_OPTIONS

KINDS = {"zoom": "shapes-zoom", "schedule": "shapes-schedule", "vqgan": "vqgan-imagenet",
         "latent": "taef2-painting", "demo": "shapes-demo"}


def test_list_prints_one_recipe_a_line_name_first(capsys):
    assert main(["recipe", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == list_recipes() and len(names) >= 6
    assert any("zoom" in name for name in names)
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # a description after each name
    for name in KINDS.values():
        assert name in names


def test_show_says_which_recipes_need_weights(capsys):
    assert main(["recipe", "show", "vqgan-imagenet"]) == 0
    out = capsys.readouterr().out
    assert "needs weights: CLIP 'ViT-B-32:openai', VQGAN 'vqgan_imagenet_f16_16384'" in out
    assert main(["recipe", "show", "shapes-zoom"]) == 0
    out = capsys.readouterr().out
    assert "needs weights: none" in out and "kind: animation" in out


@pytest.mark.parametrize("name", ["vqgan-imagenet", "taef2-painting", "vit-b-32-pixels", "robust-pixels"])
def test_recipes_that_need_weights_fail_offline_in_one_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLIPSTUDIO_WEIGHTS", raising=False)
    code = main(["recipe", "run", name, "prompt=a cat", "-o", str(tmp_path / "out.png"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not found offline" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_run_a_still_recipe_with_key_values(tmp_path, capsys, tiny_clip):
    out = tmp_path / "demo.png"
    code = main(["recipe", "run", "shapes-demo", f"clip={tiny_clip}", "steps=1", "size=32", "layout=none",
                 "cutn=2", "-o", str(out), "--quiet"])
    assert code == 0 and out.is_file()
    assert main(["recipe", "run", "shapes-demo", "no_such_setting=1"]) == 2
    assert "unknown setting 'no_such_setting'" in capsys.readouterr().err


def test_run_an_animation_recipe_writes_a_video(tmp_path, tiny_clip):
    out = tmp_path / "zoom.gif"
    code = main(["recipe", "run", "shapes-zoom", f"clip={tiny_clip}", "steps=1", "size=32", "layout=none",
                 "frames=3", "steps_per_frame=1", "-o", str(out), "--quiet"])
    assert code == 0 and len(read_video(out)) == 3


def test_dump_round_trips_exactly(tmp_path):
    path = tmp_path / "mine.yaml"
    assert main(["recipe", "dump", "-o", str(path), "--recipe", "shapes-zoom", "a red circle", "--steps", "7"]) == 0
    config = recipe_config(str(path))
    expected = GenerateConfig.from_dict(recipe_settings("shapes-zoom", {"prompt": "a red circle", "steps": 7}))
    assert config == expected
    assert recipe_animation(str(path)) == recipe_animation("shapes-zoom")
    assert path.read_text() == dump_recipe(config, recipe_animation(str(path)))  # only differences, exactly
    assert "animate" in yaml.safe_load(path.read_text()) and is_animation(str(path))


def _tiny_settings(name: str, tmp_path, tiny_clip: str) -> dict:
    """A built-in recipe's settings for a 2-step run at 32 px, models that need weights swapped for random
    tiny ones of the same kind."""
    settings = recipe_settings(name)
    overrides = {"steps": 2, "width": 32, "height": 32, "cutn": 2, "search": min(settings.get("search", 0), 1),
                 "search_restarts": 1}
    if not settings.get("prompt"):
        overrides["prompt"] = "a red circle"
    clips = settings.get("clip", GenerateConfig().clip)
    overrides["clip"] = [c if c in embedded.embedded_models("clip") else tiny_clip for c in clips]
    generator = settings.get("generator", "pixels")
    if generator in TINY_GENERATOR_OPTIONS:
        overrides["generator_options"] = TINY_GENERATOR_OPTIONS[generator](tmp_path)
    return recipe_settings(name, overrides)


@pytest.mark.parametrize("name", list_recipes())
def test_every_builtin_recipe_runs_two_steps(name, tmp_path, tiny_clip):
    config = GenerateConfig.from_dict(_tiny_settings(name, tmp_path, tiny_clip))
    if is_animation(name):
        animation = recipe_animation(name, {"frames": 2, "steps_per_frame": 1, "first_frame_steps": 2})
        result = animate(config, animation, tmp_path / "out.gif")
        assert len(read_video(result.video)) == 2
    else:
        studio = Studio(config)
        result = studio.run()
        assert result.steps_run == 2 and result.image.size == (32, 32)
