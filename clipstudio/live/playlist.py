"""Live playlists: YAML listing prompts (or recipes), each for a number of steps, with transitions between
them; read again whenever the file changes, keeping the old playlist when an edit is bad.

Smallest form::

    prompts:
      - {prompt: "a red circle on a blue background", steps: 200}
      - "a green square"                    # the playlist's default steps

Everything else is optional: ``recipe`` (default ``shapes``) and ``settings`` (on top of the recipe) for all
items or one, ``steps`` and ``transition`` defaults, ``search`` (``false`` keeps an item from searching the
generator's discrete choices when it starts; default true), and ``loop`` (``true``/``forever``, or a number of passes).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..embedded import world_default
from ..config import GenerateConfig
from ..errors import ClipstudioError
from ..guide.prompts import Prompt, parse_prompts
from ..recipes import recipe_settings

DEFAULT_RECIPE = world_default("recipe")  # a world's offline default (world.json): works on a CPU
DEFAULT_STEPS = 200
DEFAULT_TRANSITION = 50
MAX_PROMPT_CHARS = 300
MAX_ITEM_STEPS = 10_000_000
TOP_KEYS = {"prompts", "recipe", "settings", "steps", "transition", "search", "loop"}
ITEM_KEYS = {"prompt", "recipe", "settings", "steps", "transition", "search"}
# A live run has no end, so its lr does not decay unless a recipe or the playlist asks for a schedule.
LIVE_DEFAULTS = {"schedule": "constant"}


@dataclass(frozen=True)
class Item:
    """One entry of a playlist: a prompt, how many steps it plays, how many of them blend from the
    previous prompts, the full settings (recipe and overrides resolved, prompt left out), and whether the
    run searches the generator's discrete choices for it once it has reached its prompt (when the settings
    have ``search`` sweeps)."""

    prompt: str
    steps: int
    transition: int
    settings: dict[str, Any] = field(default_factory=dict, compare=True, hash=False)
    search: bool = True

    def prompts(self) -> list[Prompt]:
        return parse_prompts(self.prompt)

    def config(self, lr_scale: float = 1.0) -> GenerateConfig:
        """The settings of a :class:`~clipstudio.studio.Studio` for this item, its lr scaled."""
        settings = {**self.settings, "prompt": self.prompt}
        settings["lr"] = float(settings.get("lr", GenerateConfig().lr)) * lr_scale
        return GenerateConfig.from_dict(settings)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "steps": self.steps, "transition": self.transition, "settings": self.settings,
                "search": self.search}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Item:
        return cls(str(data["prompt"]), int(data["steps"]), int(data["transition"]), dict(data["settings"]),
                   bool(data.get("search", True)))


@dataclass(frozen=True)
class Playlist:
    """The items, the number of passes (None: forever) and the defaults a queued prompt gets."""

    items: tuple[Item, ...]
    loop: int | None
    default_steps: int
    default_transition: int
    default_settings: dict[str, Any]
    default_search: bool = True

    def queued_item(self, prompt: str, steps: int | None = None) -> Item:
        """An item for a prompt queued from the web page: the playlist's recipe, settings and defaults."""
        check_prompt(prompt)
        steps = steps or self.default_steps
        return Item(prompt, steps, min(self.default_transition, steps), dict(self.default_settings),
                    self.default_search)


def check_prompt(text: Any, limit: int = MAX_PROMPT_CHARS) -> str:
    """A prompt as text, within ``limit`` characters, printable and parseable (``text[:weight]|...``)."""
    if not isinstance(text, str) or not text.strip():
        raise ClipstudioError("a prompt must be non-empty text")
    if len(text) > limit:
        raise ClipstudioError(f"a prompt may have at most {limit} characters, got {len(text)}")
    if any(ord(c) < 32 for c in text):
        raise ClipstudioError("a prompt may not hold control characters")
    parse_prompts(text)
    return text


def _count(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_ITEM_STEPS:
        raise ClipstudioError(f"{what} must be a whole number from {low} to {MAX_ITEM_STEPS}, got {value!r}")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ClipstudioError(f"{what} must be true or false, got {value!r}")
    return value


def _loop(value: Any) -> int | None:
    if value is True or value in ("forever", None):
        return None
    if value is False:
        return 1
    if isinstance(value, int) and value >= 1:
        return value
    raise ClipstudioError(f"loop must be true, 'forever' or a number of passes >= 1, got {value!r}")


def _settings(recipe: Any, overrides: Any, where: str) -> dict[str, Any]:
    """The full settings of an item: live defaults < recipe < overrides; validated, prompt included."""
    from ..studio import validate_config

    if not isinstance(recipe, str) or not recipe:
        raise ClipstudioError(f"{where}: recipe must be a recipe name or YAML file, got {recipe!r}")
    if not isinstance(overrides, dict):
        raise ClipstudioError(f"{where}: settings must be a mapping of setting: value")
    settings = recipe_settings(recipe, overrides)
    for key, value in LIVE_DEFAULTS.items():
        settings.setdefault(key, value)
    try:
        validate_config(GenerateConfig.from_dict({**settings, "prompt": settings.get("prompt") or "x"}))
    except ClipstudioError as err:
        raise ClipstudioError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:  # GenerateConfig.validate compares values it has not type-checked
        raise ClipstudioError(f"{where}: a setting has the wrong type ({err})") from None
    return settings


def _item(raw: Any, index: int, defaults: dict[str, Any]) -> Item:
    where = f"item {index + 1}"
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, dict):
        raise ClipstudioError(f"{where} must be a prompt or a mapping with 'prompt' and 'steps'")
    unknown = sorted(set(map(str, raw)) - ITEM_KEYS)
    if unknown:
        raise ClipstudioError(f"{where}: unknown key '{unknown[0]}'; use {', '.join(sorted(ITEM_KEYS))}")
    settings_overrides = {**defaults["settings"], **(raw.get("settings") or {})} \
        if isinstance(raw.get("settings", {}), dict) else raw.get("settings")
    settings = _settings(raw.get("recipe", defaults["recipe"]), settings_overrides, where)
    prompt = raw.get("prompt", settings.pop("prompt", None))
    settings.pop("prompt", None)
    if prompt is None:
        raise ClipstudioError(f"{where}: give a prompt (or a recipe that holds one)")
    try:
        check_prompt(prompt)
    except ClipstudioError as err:
        raise ClipstudioError(f"{where}: {err}") from None
    steps = _count(raw.get("steps", defaults["steps"]), f"{where}: steps", 1)
    transition = _count(raw.get("transition", defaults["transition"]), f"{where}: transition", 0)
    search = _flag(raw.get("search", defaults["search"]), f"{where}: search")
    return Item(prompt, steps, min(transition, steps), settings, search)


def parse_playlist(data: Any) -> Playlist:
    """A playlist from the YAML's mapping; each problem is one :class:`ClipstudioError` line."""
    if not isinstance(data, dict):
        raise ClipstudioError("a playlist must be a mapping with a 'prompts' list")
    unknown = sorted(set(map(str, data)) - TOP_KEYS)
    if unknown:
        raise ClipstudioError(f"unknown key '{unknown[0]}'; use {', '.join(sorted(TOP_KEYS))}")
    prompts = data.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise ClipstudioError("'prompts' must be a non-empty list")
    defaults = {"recipe": data.get("recipe", DEFAULT_RECIPE), "settings": data.get("settings") or {},
                "steps": _count(data.get("steps", DEFAULT_STEPS), "steps", 1),
                "transition": _count(data.get("transition", DEFAULT_TRANSITION), "transition", 0),
                "search": _flag(data.get("search", True), "search")}
    if not isinstance(defaults["settings"], dict):
        raise ClipstudioError("settings must be a mapping of setting: value")
    items = tuple(_item(raw, index, defaults) for index, raw in enumerate(prompts))
    default_settings = _settings(defaults["recipe"], defaults["settings"], "playlist")
    default_settings.pop("prompt", None)
    return Playlist(items, _loop(data.get("loop", True)), defaults["steps"], defaults["transition"], default_settings,
                    defaults["search"])


def load_playlist(path: str | os.PathLike) -> Playlist:
    """Read and check a playlist file; any problem is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        data = yaml.safe_load(text)
        return parse_playlist(data)
    except ClipstudioError as err:
        raise ClipstudioError(f"playlist {path}: {err}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        raise ClipstudioError(f"playlist {path}: cannot read it: {why or type(err).__name__}") from None


def blend(previous: list[Prompt], target: list[Prompt], t: float) -> list[Prompt]:
    """Prompts whose weights move linearly from ``previous`` (t=0) to ``target`` (t=1), as the prompt
    schedules of the VQGAN+CLIP notebooks do; a text in both lists gets the sum of its two shares."""
    t = min(max(t, 0.0), 1.0)
    weights: dict[tuple[str, bool], float] = {}
    stops: dict[tuple[str, bool], float] = {}
    for prompts, share in ((previous, 1.0 - t), (target, t)):
        for prompt in prompts:
            key = (prompt.text, prompt.is_image)
            weights[key] = weights.get(key, 0.0) + prompt.weight * share
            stops[key] = prompt.stop if prompts is target else stops.get(key, prompt.stop)
    return [Prompt(text, weight, stops[(text, image)], image)
            for (text, image), weight in weights.items() if weight != 0.0 and math.isfinite(weight)]


class PlaylistWatcher:
    """Notices when the playlist file changes and reads it again; a bad edit is logged as one line and the
    old playlist kept. A change is read once the file has stopped changing for ``settle`` seconds, so an
    editor's half-saved file is not reported."""

    def __init__(self, path: str | os.PathLike, playlist: Playlist | None, log: logging.Logger,
                 interval: float = 1.0, settle: float = 0.5):
        self.path, self.playlist, self.log = Path(path), playlist, log
        self.interval, self.settle = interval, settle
        self.seen = self._signature()
        self.pending: tuple[Any, float] | None = None
        self.next_poll = 0.0

    def _signature(self) -> Any:
        try:
            st = self.path.stat()
        except OSError as err:
            return ("missing", err.strerror)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self, now: float | None = None) -> Playlist | None:
        """The new playlist if the file changed to a good one since the last call, else None."""
        now = time.monotonic() if now is None else now
        if now < self.next_poll:
            return None
        self.next_poll = now + self.interval
        signature = self._signature()
        if signature == self.seen:
            self.pending = None
            return None
        if self.pending is None or self.pending[0] != signature:
            self.pending = (signature, now)
        if now - self.pending[1] < self.settle:
            return None
        self.seen, self.pending = signature, None
        kept = f"keeping the previous playlist ({len(self.playlist.items)} items)" if self.playlist else "waiting for a good one"
        try:
            playlist = load_playlist(self.path)
        except ClipstudioError as err:
            self.log.warning("%s; %s", err, kept)
            return None
        self.playlist = playlist
        self.log.info("playlist %s reloaded: %d items", self.path, len(playlist.items))
        return playlist
