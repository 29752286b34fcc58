"""Keyframed values and the settings of an animation (:class:`AnimateConfig`).

A keyframe schedule is written as the zoom videos of this lineage write them: ``FRAME: VALUE`` pairs joined by
``|``, e.g. ``0: 1.0 | 30: 1.05``. Numbers are interpolated linearly between keys and held before the first
and after the last; a bare value (``1.02``) is the same at every frame. Prompt schedules use texts as values,
``0: a red circle | 30: a blue square``, and blend linearly from one prompt to the next (weights ``1 - t`` and
``t``), over the whole interval or over its last ``transition`` frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ClipstudioError
from .settings import Settings

Keyframes = list[tuple[int, str]]


def parse_keyframes(spec: str | float | int, what: str = "schedule") -> Keyframes:
    """``FRAME: VALUE | FRAME: VALUE ...`` (or one bare value, meaning frame 0) as sorted (frame, text) pairs."""
    text = str(spec).strip()
    if not text:
        raise ClipstudioError(f"{what} is empty")
    keys: dict[int, str] = {}
    for item in text.split("|"):
        head, sep, value = item.partition(":")
        if not sep or not head.strip().lstrip("-").isdigit():  # a bare value, or a text holding ':'
            if len(text.split("|")) > 1:
                raise ClipstudioError(f"{what}: '{item.strip()}' is not FRAME: VALUE")
            return [(0, _strip_parens(text))]
        frame = int(head)
        if frame < 0:
            raise ClipstudioError(f"{what}: frame numbers must be 0 or more, got {frame}")
        if frame in keys:
            raise ClipstudioError(f"{what}: frame {frame} has two keys")
        value = _strip_parens(value.strip())
        if not value:
            raise ClipstudioError(f"{what}: frame {frame} has no value")
        keys[frame] = value
    return sorted(keys.items())


def _strip_parens(value: str) -> str:
    """Disco Diffusion writes ``0: (1.05)``; accept it."""
    return value[1:-1].strip() if value.startswith("(") and value.endswith(")") else value


def numeric_keyframes(spec: str | float | int, what: str) -> list[tuple[int, float]]:
    """A keyframe schedule of finite numbers."""
    keys = []
    for frame, value in parse_keyframes(spec, what):
        try:
            number = float(value)
        except ValueError:
            raise ClipstudioError(f"{what}: '{value}' at frame {frame} is not a number") from None
        if not math.isfinite(number):
            raise ClipstudioError(f"{what}: the value at frame {frame} must be finite")
        keys.append((frame, number))
    return keys


def _segment(keys: list[tuple[int, Any]], frame: float) -> tuple[int, float]:
    """Index ``i`` of the key at or before ``frame`` and the linear position ``t`` in [0, 1] toward key i+1."""
    if frame <= keys[0][0]:
        return 0, 0.0
    for i in range(len(keys) - 1):
        (a, _), (b, _) = keys[i], keys[i + 1]
        if a <= frame < b:
            return i, (frame - a) / (b - a)
    return len(keys) - 1, 0.0


def interpolate(keys: list[tuple[int, float]], frame: float) -> float:
    """The value of a numeric schedule at ``frame``: linear between keys, held outside them."""
    i, t = _segment(keys, frame)
    if t == 0.0:
        return keys[i][1]
    return keys[i][1] + t * (keys[i + 1][1] - keys[i][1])


def prompt_blend(keys: Keyframes, frame: float, transition: int = 0) -> list[tuple[str, float]]:
    """The prompts guiding ``frame`` with their weights, as (text, weight) pairs: the key before at ``1 - t``
    and the key after at ``t``, ``t`` rising linearly over the whole interval (``transition`` 0) or over its
    last ``transition`` frames. Prompts of weight 0 are left out."""
    i, t = _segment(keys, frame)
    if t and transition > 0:
        a, b = keys[i][0], keys[i + 1][0]
        t = min(max((frame - (b - transition)) / min(transition, b - a), 0.0), 1.0)
    pairs = [(keys[i][1], 1.0 - t)] + ([(keys[i + 1][1], t)] if t > 0 else [])
    return [(text, weight) for text, weight in pairs if weight > 0]


@dataclass
class AnimateConfig(Settings):
    """Settings of an animation beyond :class:`GenerateConfig` (a recipe holds them under ``animate:``).

    Every schedule is a keyframe string over frames (see the module docstring). Frame 0 gets
    ``first_frame_steps`` steps (None: the run's ``steps``); each later frame is the previous image moved by
    the motion (zoom about the centre, pan in pixels, rotate in degrees, all per frame), encoded back into the
    generator, and refined for ``steps_per_frame`` steps.
    """

    frames: int = 30
    fps: float = 12.0
    steps_per_frame: int = 10
    first_frame_steps: int | None = None
    zoom: str = "1.0"  # scale per frame (>1 zooms in)
    pan_x: str = "0"  # pixels per frame, positive moves the image right
    pan_y: str = "0"  # pixels per frame, positive moves the image down
    rotate: str = "0"  # degrees per frame, positive is anticlockwise
    prompts: str = ""  # prompt keyframes; empty: the run's prompt at every frame
    transition: int = 0  # frames over which one prompt blends into the next (0: the whole interval)
    lr: str = ""  # learning-rate keyframes; empty: the run's lr
    cutn: str = ""  # cutout-count keyframes; empty: the run's cutn
    cut_min: str = ""  # smallest-cutout keyframes (fraction of the side); empty: the run's cut_min
    quality: float = 7.0  # mp4 quality, 0 (worst) to 10 (best)

    SCHEDULES = ("zoom", "pan_x", "pan_y", "rotate", "lr", "cutn", "cut_min")

    def schedule(self, name: str) -> list[tuple[int, float]] | None:
        """The numeric keyframes of schedule ``name`` (None when it is left empty)."""
        spec = getattr(self, name)
        return numeric_keyframes(spec, name.replace("_", "-")) if str(spec).strip() else None

    def prompt_keys(self) -> Keyframes | None:
        """The prompt keyframes (None when the run's prompt guides every frame)."""
        return parse_keyframes(self.prompts, "prompts") if self.prompts.strip() else None

    def value(self, name: str, frame: float, default: float) -> float:
        """Schedule ``name`` at ``frame``, or ``default`` when it is empty."""
        keys = self.schedule(name)
        return default if keys is None else interpolate(keys, frame)

    def validate(self) -> AnimateConfig:
        """Check values a user can get wrong; each problem is one line of error."""
        if self.frames < 1:
            raise ClipstudioError(f"frames must be at least 1, got {self.frames}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ClipstudioError(f"fps must be a number > 0, got {self.fps}")
        if self.steps_per_frame < 0 or (self.first_frame_steps is not None and self.first_frame_steps < 0):
            raise ClipstudioError("steps-per-frame and first-frame-steps must be 0 or more")
        if self.transition < 0:
            raise ClipstudioError(f"transition must be 0 or more frames, got {self.transition}")
        if not 0 <= self.quality <= 10:
            raise ClipstudioError(f"quality must be between 0 and 10, got {self.quality}")
        for name in self.SCHEDULES:
            keys = self.schedule(name) or []
            if name == "zoom" and any(v <= 0 for _, v in keys):
                raise ClipstudioError("zoom must be > 0 at every key")
            if name in ("lr", "cutn") and any(v < 0 for _, v in keys):
                raise ClipstudioError(f"{name} must be >= 0 at every key")
            if name == "cut_min" and any(not 0 < v <= 1 for _, v in keys):
                raise ClipstudioError("cut-min must be in (0, 1] at every key")
        self.prompt_keys()
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AnimateConfig:
        """Build from a recipe's ``animate:`` mapping; unknown keys and bad types are one line of error."""
        data = dict(data or {})
        cls.reject_unknown(data, "animate")
        typed = {}
        for name, value in data.items():
            default = getattr(cls(), name)
            typed[name] = _coerce(name, value, default)
        return cls(**typed)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """YAML/CLI values to the field's type: schedules stay text (``1.05`` -> ``"1.05"``), counts become ints."""
    if value is None and name == "first_frame_steps":
        return None
    try:
        if isinstance(default, str):
            return str(value)
        if isinstance(default, float):
            return float(value)
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    except (TypeError, ValueError):
        raise ClipstudioError(f"animate setting {name} must be like {default!r}, got {value!r}") from None
