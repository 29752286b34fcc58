"""Settings of a guided generation run. Defaults live in the dataclass; a recipe holds only the differences
and round-trips exactly (``from_dict(to_dict(c)) == c``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ClipstudioError

DEFAULT_CLIP = "ViT-B-32:openai"  # the lineage's guide; worlds' recipes name their own

OPTIMIZERS = ("adam", "adamw")
CUT_MODES = ("crops", "pooled")  # as in clipstudio.guide.cutouts (which sits a layer above)
PRECISIONS = ("float32", "bfloat16", "float16")  # autocast dtype of the generator and CLIP forward passes
from .schedules import SCHEDULES


@dataclass
class GenerateConfig:
    """Everything that determines a CLIP-guided image.

    The defaults are neutral, the lineage's classic setup (ViT-B/32 guiding Fourier pixels at 256 px); a
    world's recipes hold the differences that suit it (the shapes world's default recipe is what
    ``clipstudio generate PROMPT`` runs when no recipe, image or CLIP model is named).
    """

    prompt: str = ""
    negative: list[str] = field(default_factory=list)
    image_prompts: list[str] = field(default_factory=list)
    clip: list[str] = field(default_factory=lambda: [DEFAULT_CLIP])
    generator: str = "pixels"
    generator_options: dict[str, Any] = field(default_factory=dict)
    width: int = 256
    height: int = 256
    steps: int = 300
    seed: int = 0
    lr: float = 0.05
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 0
    cutn: int = 32
    cut_pow: float = 1.0
    cut_min: float = 0.25
    cut_noise: float = 0.05
    augments: list[str] = field(default_factory=lambda: ["affine", "jitter"])
    cut_mode: str = "crops"  # random crops, or "pooled": the whole image avg+max pooled (the classic cutouts)
    # Regularizers by name (see ``clipstudio.losses.LOSSES``) -> weight, and their options by name.
    losses: dict[str, float] = field(default_factory=dict)
    loss_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    init_image: str | None = None
    layout: str = "none"  # a generator whose searched result is the init image of this one (coarse to fine)
    layout_options: dict[str, Any] = field(default_factory=dict)  # that generator's options
    # Sweeps of coordinate search over the generator's discrete choices before step 0 (0: none). A search
    # judges each option on all the cutouts: seconds with a 32-px guide, many minutes with ViT-B-32.
    search: int = 0
    search_restarts: int = 1  # searches from random starting choices; the best end state is kept
    search_cutn: int = 0  # cutouts that judge the search's options (0: cutn); each costs a CLIP pass per option
    candidates: int = 1  # CLIP ranking: run seeds seed..seed+N-1 and keep the image the first CLIP scores best
    weights_dir: str | None = None
    device: str = "cpu"
    # Speed: autocast of the forward passes ("float32" is none; the others change the numerics), and
    # channels_last memory for convolutional generators and guides (the same numbers, faster on CPU).
    precision: str = "float32"
    channels_last: bool = True

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
        if self.cut_mode not in CUT_MODES:
            raise ClipstudioError(f"unknown cut mode '{self.cut_mode}'; choose one of: {', '.join(CUT_MODES)}")
        if self.precision not in PRECISIONS:
            raise ClipstudioError(f"unknown precision '{self.precision}'; choose one of: {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ClipstudioError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        for name in ("lr", "cut_pow", "cut_noise", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ClipstudioError(f"{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.search < 0:
            raise ClipstudioError(f"search needs 0 or more sweeps, got {self.search}")
        if self.search_cutn < 0:
            raise ClipstudioError(f"search-cutn must be 0 (as cutn) or more, got {self.search_cutn}")
        if self.search_restarts < 1:
            raise ClipstudioError(f"search-restarts must be at least 1, got {self.search_restarts}")
        if self.candidates < 1:
            raise ClipstudioError(f"candidates must be at least 1, got {self.candidates}")
        if self.cutn < 1:
            raise ClipstudioError(f"cutn must be at least 1, got {self.cutn}")
        if not self.clip:
            raise ClipstudioError("give at least one CLIP model")
        for name, weight in self.losses.items():
            if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise ClipstudioError(f"the weight of loss '{name}' must be a finite number >= 0, got {weight}")
        if any(self.losses.get(name) for name in ("perceptual", "anchor")) and not self.init_image:
            raise ClipstudioError("--perceptual and --anchor compare against an init image: give --init-image")
        return self

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
        data = _migrate(data)
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


# Settings of older versions, as recorded in their PNGs: regularizer weights were fields of their own.
_OLD_LOSS_FIELDS = ("tv", "anchor", "perceptual")


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring settings written by older versions to today's names (so ``--from`` keeps working)."""
    if not isinstance(data, dict):
        raise ClipstudioError(f"settings must be a mapping of setting: value, got {type(data).__name__}")
    data = dict(data)
    losses = dict(data.get("losses") or {})
    for name in _OLD_LOSS_FIELDS:
        if name in data:
            weight = data.pop(name)
            if weight:
                losses[name] = weight
    if "perceptual_net" in data:
        net = data.pop("perceptual_net")
        data.setdefault("loss_options", {}).setdefault("perceptual", {})["net"] = net
    if losses or "losses" in data:
        data["losses"] = losses
    if data.get("layout") == "auto":
        data["layout"] = "none"
    if data.get("search", 0) is None:
        data["search"] = 0
    return data


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
