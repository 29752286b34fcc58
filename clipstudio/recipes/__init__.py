"""Recipes: YAML files holding only the settings that differ from :class:`clipstudio.GenerateConfig`'s
defaults. The library never imports this package; the CLI does."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..config import GenerateConfig
from ..errors import ClipstudioError

RECIPE_DIR = Path(__file__).parent


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe's file by name, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ClipstudioError(f"recipe not found: {path}")
        return path
    if name_or_path not in list_recipes():
        raise ClipstudioError(f"unknown recipe '{name_or_path}'; choose one of: {', '.join(list_recipes())}")
    return RECIPE_DIR / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str) -> dict:
    """The settings a recipe changes, validated against :class:`GenerateConfig`."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ClipstudioError(f"cannot read recipe {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ClipstudioError(f"recipe {path} must be a mapping of setting: value")
    GenerateConfig.from_dict(data)  # unknown keys and bad types fail here, with the recipe's name
    return data


def dump_recipe(config: GenerateConfig) -> str:
    """The YAML text of a recipe holding only ``config``'s differences from the defaults."""
    return yaml.safe_dump(config.to_dict(), sort_keys=True)
