"""Settings of a ``diffuse`` run. Defaults live in the dataclass, once: the command derives its options from
it, and an output PNG records every field so that ``clipstudio diffuse --from out.png`` reruns it exactly."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ClipstudioError
from ..settings import Settings
from .sampling import list_samplers

# The type of each field whose default is None (None: the model's own default, resolved when it is loaded).
OPTIONAL_TYPES: dict[str, type] = {"guidance": float, "guidance_rescale": float, "steps": int, "sampler": str,
                                   "model": str, "pipeline": str}
MAX_BATCH = 256
MAX_SCALE = 64


@dataclass
class DiffuseConfig(Settings):
    """Everything that determines the images of a classifier-free-guidance diffusion run.

    ``None`` means the model's default (its guidance weight, steps, sampler and guidance rescale); the
    ``diffuse`` command resolves them after loading the model, so an output records concrete values.
    ``model`` names an embedded diffusion model of a world (``clipstudio models``); ``pipeline`` a
    Stable-Diffusion-style diffusers pipeline (directory or hub name) instead.
    """

    prompt: str = ""
    negative: str = ""
    guidance: Optional[float] = None
    guidance_rescale: Optional[float] = None
    steps: Optional[int] = None
    sampler: Optional[str] = None
    eta: float = 0.0
    seed: int = 0
    n: int = 1
    model: Optional[str] = None
    pipeline: Optional[str] = None
    device: str = "auto"
    scale: int = 1

    def validate(self) -> DiffuseConfig:
        """Check types, ranges and finiteness; each problem is one line of error, raised before any work."""
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))
        if not self.prompt.strip():
            raise ClipstudioError("diffuse needs a prompt")
        if self.guidance is not None:
            _check_finite("guidance", self.guidance, low=0.0)
        if self.guidance_rescale is not None:
            _check_finite("guidance-rescale", self.guidance_rescale, low=0.0, high=1.0)
        _check_finite("eta", self.eta, low=0.0)
        if self.steps is not None and self.steps < 1:
            raise ClipstudioError(f"steps must be a positive integer, got {self.steps}")
        if self.sampler is not None and self.sampler not in list_samplers():
            raise ClipstudioError(f"unknown sampler '{self.sampler}'; choose one of: {', '.join(list_samplers())}")
        if not 1 <= self.n <= MAX_BATCH:
            raise ClipstudioError(f"n must be between 1 and {MAX_BATCH}, got {self.n}")
        if not 1 <= self.scale <= MAX_SCALE:
            raise ClipstudioError(f"scale must be between 1 and {MAX_SCALE}, got {self.scale}")
        if self.model is not None and self.pipeline is not None:
            raise ClipstudioError("give an embedded --model or a --pipeline, not both")
        if not self.device.strip():
            raise ClipstudioError("device must name a device (auto, cpu, cuda, ...)")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffuseConfig:
        """Build a config from a PNG's settings or typed options; unknown keys are an error, not dropped."""
        if not isinstance(data, dict):
            raise ClipstudioError(f"diffuse settings must be a mapping of setting: value, got {type(data).__name__}")
        cls.reject_unknown(data, "diffuse")
        return cls(**{k: _coerce(k, v) for k, v in data.items()})


def field_type(name: str) -> type:
    """The value type of a DiffuseConfig field (for fields defaulting to None, the type when given)."""
    if name in OPTIONAL_TYPES:
        return OPTIONAL_TYPES[name]
    return type(getattr(DiffuseConfig(), name))


def _coerce(name: str, value: Any) -> Any:
    """JSON/YAML numbers back to the field's type: whole floats to ints, ints to floats; the rest as given."""
    kind = field_type(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_type(name: str, value: Any) -> None:
    kind = field_type(name)
    if value is None and name in OPTIONAL_TYPES:
        return
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        label = name.replace("_", "-")
        raise ClipstudioError(f"{label} must be {'an' if kind is int else 'a'} {kind.__name__}, got {value!r}")


def _check_finite(label: str, value: float, low: float, high: float = math.inf) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ClipstudioError(f"{label} must be a finite number {bounds}, got {value}")
