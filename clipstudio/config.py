"""Settings of a guided generation run. Defaults live in the dataclass; a recipe holds only the differences
and round-trips exactly (``from_dict(to_dict(c)) == c``)."""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from .devices import DTYPES
from .errors import ClipstudioError

DEFAULT_CLIP = "ViT-B-32:openai"  # the lineage's guide; worlds' recipes name their own

OPTIMIZERS = ("adam", "adamw")

CUT_MODES = ("crops", "pooled")  # as in clipstudio.guide.cutouts (which sits a layer above)
from .schedules import SCHEDULES
from .settings import Settings

# Bounds of the numeric settings, (low, high) inclusive. Adam moves a parameter by about lr a step, and every
# generator's latents live within a few units, so an lr above MAX_LR can only make noise (1e38 overflows to
# inf in float32); MAX_WEIGHT bounds loss weights the same way.
MAX_LR = 1e3
MAX_WEIGHT = 1e6
MAX_EMA_DECAY = 0.9999  # an EMA decay of 1 would never leave the start
SEED_MIN, SEED_MAX = 0, 2**63 - 1  # torch.manual_seed takes 64 bits; numpy's generators take any int >= 0
RANGES: dict[str, tuple[float, float]] = {
    "steps": (0, 10**9), "warmup": (0, 10**9), "lr": (0, MAX_LR), "weight_decay": (0, MAX_WEIGHT),
    "cutn": (1, 4096), "cut_pow": (0, 100), "cut_min": (1e-3, 1), "cut_noise": (0, 10),
    "search": (0, 1000), "search_restarts": (1, 1000), "candidates": (1, 10000),
    "ema": (0, MAX_EMA_DECAY), "latent_l2": (0, MAX_WEIGHT),
}
# Settings that must never come from a file: trust is an argument of the current command line only.
RUNTIME_ONLY = frozenset({"trust_checkpoint"})


def check_field_types(obj: Any) -> None:
    """Each field of a config dataclass has the type of its default (ints for ints, numbers for floats,
    lists of strings for lists, mappings with string keys for dicts, text or None for optional paths)."""
    for f in dataclasses.fields(obj):
        value, default = getattr(obj, f.name), _default(f)
        flag = f.name.replace("_", "-")
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif isinstance(default, dict):
            ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        else:  # optional paths and names
            ok = value is None or isinstance(value, str)
        if not ok:
            want = {bool: "true or false", int: "an integer", float: "a number", str: "text",
                    list: "a list of text", dict: "a mapping"}.get(type(default), "text or nothing")
            raise ClipstudioError(f"setting {flag} must be {want}, got {type(value).__name__} {_short(value)}")


def check_finite(value: Any, where: str = "settings") -> None:
    """No NaN or infinity anywhere in ``value`` (nested mappings and lists included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ClipstudioError(f"{where} must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{key}".replace("_", "-") if where == "settings" else f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite(item, where)


def check_ranges(obj: Any, ranges: dict[str, tuple[float, float]]) -> None:
    """Each named numeric field within its inclusive (low, high) range."""
    for name, (low, high) in ranges.items():
        value = getattr(obj, name)
        if not low <= value <= high:
            raise ClipstudioError(f"{name.replace('_', '-')} must be between {low:g} and {high:g}, got {_short(value)}")


def check_numbers(**specs: tuple[Any, float, float]) -> None:
    """``name=(value, low, high)``: each value a finite number within [low, high] (None: not given, skipped).
    The one check for options that are not fields of a config dataclass (training, sampling)."""
    for name, (value, low, high) in specs.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ClipstudioError(f"{flag} must be a finite number, got {_short(value)}")
        if not low <= value <= high:
            raise ClipstudioError(f"{flag} must be between {low:g} and {high:g}, got {_short(value)}")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class GenerateConfig(Settings):
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
    # jitter-linear: ColorJiggle's draws as one colour matrix per cutout (issue 15: the same shapes-world pass
    # rate, a fifth of a guide pass cheaper per step than kornia's HSV "jitter").
    augments: list[str] = field(default_factory=lambda: ["affine", "jitter-linear"])
    cut_mode: str = "crops"  # random crops, or "pooled": the whole image avg+max pooled (the classic cutouts)
    # Guidance tricks of the lineage, each off by default (issue 12 measures them one at a time).
    grad_norm: bool = False  # scale each trainable parameter's gradient to unit L2 norm before the step
    ema: float = 0.0  # decay of an EMA of the generator's parameters, which renders the output (0: none)
    latent_l2: float = 0.0  # weight of an L2 pull of the latents toward zero (toward the init's with one)
    latent_l2_schedule: str = "linear"  # how that weight decays to 0 over the steps: constant, cosine, linear
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
    device: str = "auto"  # auto: CUDA, then MPS, then CPU (clipstudio.devices.resolve_device)
    dtype: str = "float32"  # bfloat16 or float16: the losses (the CLIP forward) run under autocast where supported
    # Speed: channels_last memory for convolutional generators and guides (the same numbers, faster on CPU).
    channels_last: bool = True
    # Speed: replay kornia's augmentation draws without its per-call machinery (the same cutouts to float32
    # rounding; at channels tied exactly the hue step's gradient is split between them). False: kornia's forward.
    fast_augments: bool = True
    # Speed: draw every cutout's crop, noise level and augmentation parameters in one vectorized call
    # (guide/augment_draw.py): kornia's distributions from another random stream, so other cutouts for a
    # seed. False: each kornia module's own forward_parameters, as before.
    batched_draw: bool = True
    # Speed: PyTorch's fused Adam/AdamW kernel (one call for all parameters) where the device has one (CPU,
    # CUDA): the same update to float32 rounding. False: the per-parameter loop.
    fused_optimizer: bool = True

    def validate(self) -> GenerateConfig:
        """Check values a user can get wrong (types, ranges, finiteness); each problem is one line of error.

        The same check serves the CLI, ``--from`` images, recipes and the Python API.
        """
        check_field_types(self)
        check_finite(self.to_full_dict())
        for key in ("generator_options", "layout_options"):
            if RUNTIME_ONLY & set(getattr(self, key)):
                raise ClipstudioError(f"{key} may not hold trust_checkpoint: trust is given on the command line "
                                      "of a run (--trust-checkpoint), never by settings")
        if not self.prompt.strip() and not self.image_prompts:
            raise ClipstudioError("give a prompt (or an --image-prompt)")
        if not (8 <= self.width <= 4096 and 8 <= self.height <= 4096):
            raise ClipstudioError(f"size must be between 8 and 4096 pixels a side, got {self.width}x{self.height}")
        if self.optimizer not in OPTIMIZERS:
            raise ClipstudioError(f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        if self.cut_mode not in CUT_MODES:
            raise ClipstudioError(f"unknown cut mode '{self.cut_mode}'; choose one of: {', '.join(CUT_MODES)}")
        if self.schedule not in SCHEDULES:
            raise ClipstudioError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if self.latent_l2_schedule not in SCHEDULES:
            raise ClipstudioError(f"unknown latent-l2-schedule '{self.latent_l2_schedule}'; choose one of: "
                                  f"{', '.join(SCHEDULES)}")
        check_ranges(self, RANGES)
        if not (SEED_MIN <= self.seed and self.seed + self.candidates - 1 <= SEED_MAX):
            raise ClipstudioError(f"seed must be between {SEED_MIN} and {SEED_MAX} (minus candidates), got {self.seed}")
        if self.search_cutn < 0:
            raise ClipstudioError(f"search-cutn must be 0 (as cutn) or more, got {self.search_cutn}")
        if not self.clip:
            raise ClipstudioError("give at least one CLIP model")
        if self.dtype not in DTYPES:
            raise ClipstudioError(f"unknown dtype '{self.dtype}'; choose one of: {', '.join(DTYPES)}")
        for name, weight in self.losses.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
                raise ClipstudioError(f"the weight of loss '{name}' must be a number in [0, {MAX_WEIGHT:g}], got {weight}")
        for name, options in self.loss_options.items():
            if not isinstance(options, dict):
                raise ClipstudioError(f"loss_options of '{name}' must be a mapping, got {type(options).__name__}")
        if any(self.losses.get(name) for name in ("perceptual", "anchor")) and not self.init_image:
            raise ClipstudioError("--perceptual and --anchor compare against an init image: give --init-image")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateConfig:
        """Build a config from a recipe or a PNG's settings; unknown keys are an error, not silently dropped."""
        try:
            data = _migrate(data)
        except (TypeError, ValueError, AttributeError) as err:  # a mapping where a list was, and so on
            raise ClipstudioError(f"bad settings: {err}") from None
        cls.reject_unknown(data)
        try:
            return cls(**{k: _coerce(cls, k, v) for k, v in data.items()})
        except (TypeError, ValueError) as err:
            raise ClipstudioError(f"bad settings: {err}") from None


# Settings of older versions, as recorded in their PNGs: regularizer weights were fields of their own.
_OLD_LOSS_FIELDS = ("tv", "anchor", "perceptual")


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring settings written by older versions to today's names (so ``--from`` keeps working)."""
    if not isinstance(data, dict):
        raise ClipstudioError(f"settings must be a mapping of setting: value, got {type(data).__name__}")
    data = _without_runtime_only(dict(data))
    losses = data.get("losses") or {}
    if not isinstance(losses, dict):
        raise ClipstudioError(f"setting losses must be a mapping of name: weight, got {type(losses).__name__}")
    losses = dict(losses)
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


def _without_runtime_only(data: dict[str, Any]) -> dict[str, Any]:
    """Settings from a file with ``trust_checkpoint`` removed (older versions recorded it): trust comes from the
    command line of the current run only, so a PNG or a recipe can never make a run unpickle a checkpoint."""
    for key in ("generator_options", "layout_options"):
        options = data.get(key)
        if isinstance(options, dict) and RUNTIME_ONLY & set(options):
            data[key] = {k: v for k, v in options.items() if k not in RUNTIME_ONLY}
            warnings.warn(f"ignored trust_checkpoint in the {key} of these settings: trust comes only from "
                          "--trust-checkpoint on the command line")
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
