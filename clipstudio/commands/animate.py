"""``clipstudio animate RECIPE_OR_PATH -o out.mp4 [key=value ...]``: a recipe as a video (zoom, pan, rotate,
prompt/lr/cutout schedules; see :class:`clipstudio.keyframes.AnimateConfig`).

``key=value`` pairs change a recipe's settings: a :class:`GenerateConfig` field (``prompt=...``, ``steps=20``,
``clip=a,b``), ``size=W`` or ``size=WxH``, a mapping entry (``generator_options.vae=taef2``), or an animation
setting (``frames=60``, ``zoom="0: 1 | 30: 1.05"``); ``animate.lr``, ``animate.cutn`` and ``animate.cut_min``
name the schedules that share a name with a generate setting.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..config import GenerateConfig
from ..errors import ClipstudioError
from ..keyframes import AnimateConfig
from ._options import scalar

_GENERATE_FIELDS = {f.name: f for f in dataclasses.fields(GenerateConfig)}
_ANIMATE_FIELDS = {f.name for f in dataclasses.fields(AnimateConfig)}


def split_overrides(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``key=value`` texts as (generate settings, animation settings); unknown keys are one line of error."""
    settings: dict[str, Any] = {}
    animation: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ClipstudioError(f"expected KEY=VALUE, got '{pair}'")
        if key.startswith("animate."):
            animation[_animate_key(key[len("animate."):])] = text
        elif key == "size":
            width, _, height = text.lower().partition("x")
            settings["width"], settings["height"] = int(scalar(width)), int(scalar(height or width))
        elif "." in key and key.split(".", 1)[0] in _GENERATE_FIELDS:
            field, sub = key.split(".", 1)
            settings.setdefault(field, {})[sub] = scalar(text)
        elif key in _GENERATE_FIELDS:
            settings[key] = _typed(key, text)
        elif key in _ANIMATE_FIELDS:
            animation[key] = text
        else:
            raise ClipstudioError(f"unknown setting '{key}' (a generate or animate setting; see 'recipe show')")
    return settings, animation


def _animate_key(key: str) -> str:
    if key not in _ANIMATE_FIELDS:
        raise ClipstudioError(f"unknown animate setting '{key}'; choose one of: {', '.join(sorted(_ANIMATE_FIELDS))}")
    return key


def _typed(key: str, text: str) -> Any:
    default = GenerateConfig().__getattribute__(key)
    if isinstance(default, list):
        return [item.strip() for item in text.split(",") if item.strip()]
    if isinstance(default, str) or default is None:
        return None if default is None and text.lower() in ("", "none") else text
    return scalar(text)


def recipe_run_config(recipe: str, pairs: list[str]) -> tuple[GenerateConfig, AnimateConfig]:
    """The run settings of a recipe with ``key=value`` pairs on top, and its animation settings (the
    defaults for a still recipe). A run needs a prompt: the recipe's, a pair's, or the first prompt key."""
    from ..recipes import recipe_animation, recipe_settings
    from ..studio import validate_config

    settings, overrides = split_overrides(pairs)
    merged = recipe_settings(recipe, settings)
    for key in ("generator_options", "layout_options", "losses", "loss_options"):
        if key in settings:  # mapping entries add to the recipe's mapping rather than replace it
            merged[key] = {**recipe_settings(recipe).get(key, {}), **settings[key]}
    config = GenerateConfig.from_dict(merged)
    animation = recipe_animation(recipe, overrides)
    keys = animation.prompt_keys()
    if not config.prompt.strip():
        if not keys:
            raise ClipstudioError(f"recipe '{recipe}' holds no prompt: add prompt=\"...\"")
        config = config.replace(prompt=keys[0][1])
    return validate_config(config), animation


def animate_recipe(recipe: str, pairs: list[str], output: str, frames_dir: str | None = None,
                   checkpoint: str | None = None, quiet: bool = False) -> int:
    """Render a recipe as a video; prints one line about what was written."""
    from ..animation import animate

    config, animation = recipe_run_config(recipe, pairs)
    result = animate(config, animation, output, frames_dir=frames_dir, checkpoint=checkpoint, progress=not quiet)
    resumed = f", resumed at frame {result.resumed_at}" if result.resumed_at else ""
    print(f"wrote {result.video} ({len(result.frames)} frames at {animation.fps:g} fps, frames in "
          f"{result.frames[0].parent}; {result.frames_run} frames in {result.seconds:.1f} s{resumed})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("animate", help="render a recipe as a zoom/schedule video (.mp4 or .gif)")
    parser.add_argument("recipe", help="a recipe name or YAML file (see 'clipstudio recipe list')")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="settings on top of the recipe, e.g. prompt=\"a red circle\" frames=60 size=128")
    parser.add_argument("-o", "--output", default="out.mp4", help="the video: .mp4 or .gif (written atomically)")
    parser.add_argument("--frames-dir", default=None, help="where the PNG frames go (default: OUTPUT_frames)")
    parser.add_argument("--checkpoint", default=None,
                        help="save the run state here after each frame; resume from it if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    return animate_recipe(args.recipe, args.overrides, str(output), args.frames_dir, args.checkpoint, args.quiet)
