"""Recipes: YAML files holding only the settings that differ from :class:`clipstudio.GenerateConfig`'s
defaults. The package's own live here; worlds ship theirs (see :mod:`clipstudio.embedded`). The library never
imports this package; commands and users do.

Besides settings, a recipe may hold:

- ``generators: {NAME: {settings}}``: settings that replace the recipe's own when the run's generator is
  NAME (so a world's recipe can say what suits each generator); such a section may hold
  ``layouts: {LAYOUT: {settings}}``, applied on top when the run's layout is LAYOUT (``none``: a run from
  noise, which wants other steps and noise than one that refines a searched layout);
- keys starting with ``x-``: ignored, a place for YAML anchors that other keys reuse;
- ``animate: {settings}``: the recipe is an animation, with these :class:`clipstudio.keyframes.AnimateConfig`
  settings (again only the differences from the defaults).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import GenerateConfig
from ..embedded import recipe_dirs
from ..errors import ClipstudioError
from ..keyframes import AnimateConfig

RECIPE_DIR = Path(__file__).parent
PER_GENERATOR = "generators"
PER_LAYOUT = "layouts"
ANIMATE = "animate"


def _recipe_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in [RECIPE_DIR, *recipe_dirs()]:
        for path in sorted(folder.glob("*.yaml")):
            files.setdefault(path.stem, path)
    return files


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package and its worlds."""
    return sorted(_recipe_files())


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe's file by name, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ClipstudioError(f"recipe not found: {path}")
        return path
    files = _recipe_files()
    if name_or_path not in files:
        raise ClipstudioError(f"unknown recipe '{name_or_path}'; choose one of: {', '.join(sorted(files))}")
    return files[name_or_path]


def recipe_description(name_or_path: str) -> str:
    """The first sentence of a recipe's leading comment, on one line."""
    lines = []
    for line in recipe_path(name_or_path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = text.find(". ")
    return text[:end + 1] if end >= 0 else text


def read_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's raw mapping (settings, ``generators`` sections), ``x-`` keys dropped, validated."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ClipstudioError(f"cannot read recipe {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ClipstudioError(f"recipe {path} must be a mapping of setting: value")
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    sections = data.get(PER_GENERATOR, {})
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ClipstudioError(f"recipe {path}: '{PER_GENERATOR}' must map generator names to settings")
    layouts = [section.get(PER_LAYOUT, {}) for section in sections.values()]
    if not all(isinstance(v, dict) and all(isinstance(s, dict) for s in v.values()) for v in layouts):
        raise ClipstudioError(f"recipe {path}: a generator's '{PER_LAYOUT}' must map layout names to settings")
    if ANIMATE in data and not isinstance(data[ANIMATE], (dict, type(None))):
        raise ClipstudioError(f"recipe {path}: '{ANIMATE}' must map animation settings to values")
    try:
        per_layout = [settings for v in layouts for settings in v.values()]
        for settings in [_settings_only(data), *map(_section_settings, sections.values()), *per_layout]:
            GenerateConfig.from_dict(settings)  # unknown keys and bad types fail here, with the recipe's name
        if ANIMATE in data:
            AnimateConfig.from_dict(data[ANIMATE]).validate()
    except ClipstudioError as err:
        raise ClipstudioError(f"recipe {path}: {err}") from None
    return data


def _settings_only(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in (PER_GENERATOR, ANIMATE)}


def _section_settings(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != PER_LAYOUT}


def is_animation(name_or_path: str) -> bool:
    """Whether a recipe is an animation (it has an ``animate:`` section)."""
    return ANIMATE in read_recipe(name_or_path)


def recipe_animation(name_or_path: str, overrides: dict[str, Any] | None = None) -> AnimateConfig:
    """The :class:`AnimateConfig` of a recipe's ``animate:`` section (the defaults if it has none), with
    ``overrides`` on top."""
    data = read_recipe(name_or_path).get(ANIMATE) or {}
    return AnimateConfig.from_dict({**data, **(overrides or {})}).validate()


def recipe_settings(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a recipe gives with ``overrides`` on top: its ``generators`` section for the run's
    generator (the overridden one if given) replaces its own settings, that section's ``layouts`` entry for
    the run's layout (again the overridden one if given) replaces those, then the overrides apply."""
    data = read_recipe(name_or_path)
    overrides = dict(overrides or {})
    settings = _settings_only(data)
    generator = overrides.get("generator", settings.get("generator", GenerateConfig().generator))
    section = data.get(PER_GENERATOR, {}).get(generator, {})
    settings.update(_section_settings(section))
    layout = overrides.get("layout", settings.get("layout", GenerateConfig().layout))
    settings.update(section.get(PER_LAYOUT, {}).get(layout, {}))
    settings.update(overrides)
    return settings


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """The settings a recipe changes for its own generator."""
    return recipe_settings(name_or_path)


def recipe_config(name_or_path: str, prompt: str | None = None, **overrides: Any) -> GenerateConfig:
    """A :class:`GenerateConfig` from a recipe, with a prompt and settings on top (for notebooks)."""
    if prompt is not None:
        overrides["prompt"] = prompt
    if "size" in overrides:
        overrides["width"], overrides["height"] = overrides.pop("size")
    return GenerateConfig.from_dict(recipe_settings(name_or_path, overrides))


def dump_recipe(config: GenerateConfig, animation: AnimateConfig | None = None) -> str:
    """The YAML text of a recipe holding only ``config``'s (and ``animation``'s) differences from the
    defaults; with ``animation``, the recipe is an animation even if all its settings are the defaults."""
    data = config.to_dict()
    if animation is not None:
        data[ANIMATE] = animation.to_dict()
    return yaml.safe_dump(data, sort_keys=True)
