"""Recipes: YAML files holding only the settings that differ from :class:`clipstudio.GenerateConfig`'s
defaults. The package's own live here; worlds ship theirs (see :mod:`clipstudio.embedded`). The library never
imports this package; commands and users do.

Besides settings, a recipe may hold:

- ``generators: {NAME: {settings}}``: settings that replace the recipe's own when the run's generator is
  NAME (so a world's recipe can say what suits each generator);
- keys starting with ``x-``: ignored, a place for YAML anchors that other keys reuse.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import GenerateConfig
from ..embedded import recipe_dirs
from ..errors import ClipstudioError

RECIPE_DIR = Path(__file__).parent
PER_GENERATOR = "generators"


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
    """The first line of a recipe's leading comment."""
    for line in recipe_path(name_or_path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


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
    for settings in [_settings_only(data), *sections.values()]:
        try:
            GenerateConfig.from_dict(settings)  # unknown keys and bad types fail here, with the recipe's name
        except ClipstudioError as err:
            raise ClipstudioError(f"recipe {path}: {err}") from None
    return data


def _settings_only(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != PER_GENERATOR}


def recipe_settings(name_or_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a recipe gives with ``overrides`` on top: its ``generators`` section for the run's
    generator (the overridden one if given) replaces its own settings, then the overrides apply."""
    data = read_recipe(name_or_path)
    overrides = dict(overrides or {})
    settings = _settings_only(data)
    generator = overrides.get("generator", settings.get("generator", GenerateConfig().generator))
    settings.update(data.get(PER_GENERATOR, {}).get(generator, {}))
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


def dump_recipe(config: GenerateConfig) -> str:
    """The YAML text of a recipe holding only ``config``'s differences from the defaults."""
    return yaml.safe_dump(config.to_dict(), sort_keys=True)
