"""Embedded models and recipes that worlds ship, found as data.

A world is a folder holding a ``world.json`` (like open_clip's model-config JSON files): its CLIP models
(checkpoint, card), its diffusion models (checkpoint, and the ``module:function`` that loads one), the folder
of its open_clip model configs and the folder of its recipes. The package's own worlds live in
``clipstudio/worlds/*/``; ``CLIPSTUDIO_WORLDS`` (an ``os.pathsep`` list of folders) adds more. The core reads
these files; it never imports a world's code by name, so a world is a plugin beside the core.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ClipstudioError

WORLDS_DIR = Path(__file__).resolve().parent / "worlds"


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model of a world: its name, kind (``clip`` or ``diffusion``) and files."""

    name: str
    kind: str
    world: str
    checkpoint: Path
    card: Path | None = None
    loader: str | None = None  # "module:function(path, device)" for diffusion models
    about: str = ""


@dataclass(frozen=True)
class World:
    """A world read from its ``world.json``."""

    name: str
    folder: Path
    about: str
    default_recipe: str | None
    default_clip: str | None
    default_diffusion: str | None
    model_configs: Path | None
    recipes: Path | None
    models: tuple[EmbeddedModel, ...]


def _world_folders() -> list[Path]:
    folders = sorted(p.parent for p in WORLDS_DIR.glob("*/world.json"))
    for extra in os.environ.get("CLIPSTUDIO_WORLDS", "").split(os.pathsep):
        if extra and (Path(extra) / "world.json").is_file():
            folders.append(Path(extra).resolve())
    return folders


def _read_world(folder: Path) -> World:
    path = folder / "world.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise ClipstudioError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ClipstudioError(f"{path} must be a JSON object with a 'name'")

    def sub(key: str) -> Path | None:
        return folder / data[key] if isinstance(data.get(key), str) else None

    models = []
    for kind in ("clip", "diffusion"):
        entries = data.get(kind) or {}
        if not isinstance(entries, dict):
            raise ClipstudioError(f"{path}: '{kind}' must be an object of model name: entry")
        for name, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("checkpoint"), str):
                raise ClipstudioError(f"{path}: model '{name}' needs a 'checkpoint' path")
            loader = entry.get("loader")
            if loader is not None and not (isinstance(loader, str) and ":" in loader):
                raise ClipstudioError(f"{path}: the loader of model '{name}' must be 'module:function'")
            card = folder / entry["card"] if isinstance(entry.get("card"), str) else None
            models.append(EmbeddedModel(name, kind, data["name"], folder / entry["checkpoint"], card,
                                        loader, str(entry.get("about", ""))))
    defaults = {}
    for what in ("recipe", "clip", "diffusion"):
        defaults[what] = data.get(f"default_{what}")
        if defaults[what] is not None and not isinstance(defaults[what], str):
            raise ClipstudioError(f"{path}: 'default_{what}' must be a name")
    return World(data["name"], folder, str(data.get("about", "")), defaults["recipe"], defaults["clip"],
                 defaults["diffusion"], sub("model_configs"), sub("recipes"), tuple(models))


@functools.cache
def worlds() -> dict[str, World]:
    """Every world found, by name."""
    return {world.name: world for world in map(_read_world, _world_folders())}


def list_worlds() -> list[str]:
    """Names of the worlds found."""
    return sorted(worlds())


def embedded_models(kind: str | None = None) -> dict[str, EmbeddedModel]:
    """Embedded models of every world by name, optionally of one ``kind`` (``clip`` or ``diffusion``)."""
    return {m.name: m for w in worlds().values() for m in w.models if kind in (None, m.kind)}


def list_embedded(kind: str | None = None) -> list[str]:
    """Names of the embedded models (of one ``kind``)."""
    return list(embedded_models(kind))


def embedded_model(name: str, kind: str | None = None) -> EmbeddedModel:
    """An embedded model by name; its checkpoint must exist (one line of error otherwise)."""
    models = embedded_models(kind)
    if name not in models:
        raise ClipstudioError(f"unknown embedded model '{name}'; choose one of: {', '.join(models) or 'none'}")
    model = models[name]
    if not model.checkpoint.is_file():
        raise ClipstudioError(f"the embedded model '{name}' is missing from this install ({model.checkpoint})")
    return model


def model_config_dirs() -> list[Path]:
    """Folders of open_clip model configs that worlds ship."""
    return [w.model_configs for w in worlds().values() if w.model_configs and w.model_configs.is_dir()]


def recipe_dirs() -> list[Path]:
    """Folders of recipes that worlds ship."""
    return [w.recipes for w in worlds().values() if w.recipes and w.recipes.is_dir()]


def world_default(what: str) -> str:
    """What the first world that names one gives as its ``default_recipe``, ``default_clip`` or
    ``default_diffusion``: the offline defaults of commands, batches and live mode, as data rather than code."""
    for world in worlds().values():
        value = getattr(world, f"default_{what}", None)
        if value:
            return value
    raise ClipstudioError(f"no world names a default {what}; name one (see 'clipstudio models')")
