"""Settings of a guided generation run. Defaults live in the dataclass; a recipe holds only the differences
and round-trips exactly (``from_dict(to_dict(c)) == c``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ClipstudioError
from .guide.clip import DEFAULT_CLIP

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class GenerateConfig:
    """Everything that determines a CLIP-guided image.

    The defaults are the embedded shapes-world setup, measured with ``clipstudio eval generate``:
    ``primitives`` (flat shapes in the world's palette, CLIPDraw-style) guided by ``shapes-guide``, whose
    discrete choices (colours, shape types, coarse places and sizes) are first searched by CLIP score from
    four random starts, then 20 Adam steps refine the continuous ones; full-image cutouts (crops would move
    "left" and "top"). Recipes hold differences from these.
    """

    prompt: str = ""
    negative: list[str] = field(default_factory=list)
    image_prompts: list[str] = field(default_factory=list)
    clip: list[str] = field(default_factory=lambda: [DEFAULT_CLIP])
    generator: str = "primitives"
    generator_options: dict[str, Any] = field(default_factory=dict)
    width: int = 64
    height: int = 64
    steps: int = 20
    seed: int = 0
    lr: float = 0.05
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 0
    cutn: int = 16
    cut_pow: float = 1.0
    cut_min: float = 1.0
    cut_noise: float = 0.05
    augments: list[str] = field(default_factory=lambda: ["affine", "jitter"])
    tv: float = 0.0
    anchor: float = 0.0
    perceptual: float = 0.0
    perceptual_net: str = "alex"
    init_image: str | None = None
    layout: str = "auto"  # a generator whose result is the init image ("auto": primitives in the shapes world)
    # Sweeps of coordinate search over the generator's discrete choices before step 0. None: 3 when every
    # guide is an embedded shapes-world model, else 0; a search judges each option on all the cutouts, which
    # takes seconds with the 32-px guide but many minutes with ViT-B-32, so there it is asked for by hand.
    search: int | None = None
    search_restarts: int = 4  # searches from random starting choices; the best end state is kept
    candidates: int = 1  # CLIP ranking: run seeds seed..seed+N-1 and keep the image the first CLIP scores best
    weights_dir: str | None = None
    device: str = "cpu"

    def validate(self) -> GenerateConfig:
        """Check values a user can get wrong; each problem is one line of error."""
        if not self.prompt.strip() and not self.image_prompts:
            raise ClipstudioError("give a prompt (or an --image-prompt)")
        if self.steps < 0:
            raise ClipstudioError(f"steps must be 0 or more, got {self.steps}")
        if not (8 <= self.width <= 4096 and 8 <= self.height <= 4096):
            raise ClipstudioError(f"size must be between 8 and 4096 pixels a side, got {self.width}x{self.height}")
        if self.optimizer not in OPTIMIZERS:
            raise ClipstudioError(f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ClipstudioError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        for name in ("lr", "tv", "anchor", "perceptual", "cut_pow", "cut_noise", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ClipstudioError(f"{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.search is not None and self.search < 0:
            raise ClipstudioError(f"search needs 0 or more sweeps, got {self.search}")
        if self.search_restarts < 1:
            raise ClipstudioError(f"search-restarts must be at least 1, got {self.search_restarts}")
        if self.candidates < 1:
            raise ClipstudioError(f"candidates must be at least 1, got {self.candidates}")
        if self.cutn < 1:
            raise ClipstudioError(f"cutn must be at least 1, got {self.cutn}")
        from .generators import GENERATORS, list_generators
        from .guide.cutouts import AUGMENTS, list_augments

        if self.generator not in GENERATORS:
            raise ClipstudioError(
                f"unknown generator '{self.generator}'; choose one of: {', '.join(list_generators())}")
        if self.layout not in ("auto", "none") and self.layout not in GENERATORS:
            raise ClipstudioError(f"unknown layout '{self.layout}'; choose auto, none or one of: "
                                  f"{', '.join(list_generators())}")
        unknown = [name for name in self.augments if name not in AUGMENTS]
        if unknown:
            raise ClipstudioError(f"unknown augment '{unknown[0]}'; choose from: {', '.join(list_augments())}")
        if not self.clip:
            raise ClipstudioError("give at least one CLIP model")
        if (self.perceptual or self.anchor) and not self.init_image:
            raise ClipstudioError("--perceptual and --anchor compare against an init image: give --init-image")
        return self

    def shapes_world(self) -> bool:
        """True when every guide is one of the embedded shapes-world models."""
        from .guide.clip import EMBEDDED_MODELS

        return all(spec.split(":")[0] in EMBEDDED_MODELS for spec in self.clip)

    def search_sweeps(self) -> int:
        """The search sweeps this run makes (``search``, with None resolved)."""
        if self.search is not None:
            return self.search
        return 3 if self.shapes_world() else 0

    def to_dict(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults (what a recipe file holds)."""
        defaults = GenerateConfig()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(defaults, f.name)}

    def to_full_dict(self) -> dict[str, Any]:
        """Every setting, defaults included (what an output PNG records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateConfig:
        """Build a config from a recipe or a PNG's settings; unknown keys are an error, not silently dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ClipstudioError(f"unknown setting(s): {', '.join(unknown)}")
        try:
            return cls(**{k: _coerce(cls, k, v) for k, v in data.items()})
        except (TypeError, ValueError) as err:
            raise ClipstudioError(f"bad settings: {err}") from None

    def replace(self, **changes: Any) -> GenerateConfig:
        """A copy with some settings changed (unknown names are an error)."""
        return GenerateConfig.from_dict({**self.to_full_dict(), **changes})


def _coerce(cls, name: str, value: Any) -> Any:
    """Bring YAML/JSON values back to the field's type (tuples to lists, ints to floats)."""
    default = getattr(cls(), name)
    if isinstance(default, list) and isinstance(value, (tuple, list)):
        return list(value)
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
