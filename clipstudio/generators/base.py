"""The generator contract.

A generator is an ``nn.Module`` that holds trainable latent parameters and draws an image from them.

- ``__init__(size, init_image=None, **options)``: ``size`` is ``(width, height)`` in pixels of the output;
  ``init_image`` is an optional NCHW float tensor in [0, 1] (any size: the generator resizes it) that the
  latent starts from; ``options`` are generator-specific keyword options (strings from the CLI are parsed by
  the generator).
- ``forward()`` takes no argument and returns an NCHW float tensor in [0, 1] of shape ``(1, 3, height, width)``,
  differentiable with respect to the trainable parameters.
- ``post_step()`` is called by the optimizer after each optimizer step (e.g. to clamp latents). The default
  does nothing.
- ``choices()`` (optional) returns the generator's discrete choices as :class:`Choice` objects (a colour
  from a palette, a shape type, whether an object is drawn...). Gradients move such choices poorly, so
  the studio may search them: it sets each option in turn, scores ``forward()`` with the loss, and keeps the
  best. The default returns no choices. The class attribute ``search_options`` names the options that only
  the search reads (its lattice, its costs): a run state saved after the search resumes when they differ.
- ``render_options(choice, options)`` returns the images ``(len(options), 3, height, width)`` that ``forward()``
  gives with ``choice`` set to each option in turn, leaving it at the last; the search calls it, without
  gradients. The default does just that; a generator may draw them all at once.
- ``set_image(image)`` (optional) puts an NCHW [0, 1] image (any size) into the latent, as an init image
  would start it: pixels directly, latent and VQGAN generators through their encoders. Animations use it to
  move the current image (zoom, pan, rotate) and continue from the moved one. It returns False when the
  generator cannot take an image (the default), and the caller then says so rather than pretend.
- ``code()`` (optional) returns the :class:`LatentCode` that ``forward()`` decodes, when the generator is an
  autoencoder's latent: the trainable latent and the autoencoder's name. A loss that works in the same latent
  space (score distillation with a latent diffusion model) reads it rather than re-encoding the image, whose
  encoder gradient paints texture. The default returns None.

The optimizer optimizes ``generator.parameters()`` that require grad, calls ``forward()``, ``post_step()``,
``choices()``, ``render_options()`` and ``code()``, and nothing else. Frozen parts (decoders, codebooks) must have ``requires_grad=False``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ClipstudioError


@dataclass(frozen=True)
class Choice:
    """One discrete choice of a generator: ``options`` values, read by ``get()`` and made by ``set(i)``;
    the search skips options for which ``allowed(i)`` is False at the time, and adds ``cost(i)`` to the
    loss of option ``i``."""

    name: str
    options: int
    get: Callable[[], int]
    set: Callable[[int], None]
    allowed: Callable[[int], bool] = lambda option: True  # e.g. a colour another shape already has
    cost: Callable[[int], float] = lambda option: 0.0  # added to the loss: a prior, e.g. against extra shapes


@dataclass(frozen=True)
class LatentCode:
    """The latent a generator decodes its image from: ``latent`` (1, C, h, w), differentiable, in the raw
    space of the autoencoder named ``space`` (e.g. ``taef2``)."""

    latent: torch.Tensor
    space: str


class Generator(nn.Module):
    """Base class for generators; see the module docstring for the contract."""

    search_options: tuple[str, ...] = ()  # options only the search reads

    def __init__(self, size: tuple[int, int], init_image: torch.Tensor | None = None, **options: Any):
        super().__init__()
        width, height = validate_size(size)
        self.width, self.height = width, height
        if options:
            raise ClipstudioError(
                f"generator '{type(self).__name__}' has no option(s): {', '.join(sorted(options))}"
            )

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def post_step(self) -> None:
        """Called after each optimizer step; override to project the latent back onto its valid set."""

    def choices(self) -> list[Choice]:
        """The discrete choices the studio may search; none by default."""
        return []

    def render_options(self, choice: Choice, options: list[int]) -> torch.Tensor:
        """The image of each option of ``choice``, (len(options), 3, H, W): set in turn, ``forward()`` each (the
        choice is left at the last option)."""
        images = []
        for option in options:
            choice.set(option)
            images.append(self())
        return torch.cat(images)

    def code(self) -> LatentCode | None:
        """The latent the image is decoded from, for losses in its space; None (the default) if there is none."""
        return None

    def set_image(self, image: torch.Tensor) -> bool:
        """Encode ``image`` (NCHW in [0, 1], any size) into the trainable latent; False if this generator
        cannot (the default)."""
        return False


def validate_size(size: tuple[int, int]) -> tuple[int, int]:
    """Check a ``(width, height)`` pair and return it as ints; bad sizes raise a one-line error."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ClipstudioError(f"size must be two integers WIDTH HEIGHT, got {size!r}") from None
    if width < 8 or height < 8 or width > 4096 or height > 4096:
        raise ClipstudioError(f"size must be between 8 and 4096 pixels a side, got {width}x{height}")
    return width, height


def resize_init(init_image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize an NCHW [0, 1] init image to the generator's output size."""
    if init_image.dim() == 3:
        init_image = init_image.unsqueeze(0)
    if init_image.shape[-2:] != (height, width):
        init_image = nn.functional.interpolate(
            init_image, size=(height, width), mode="bicubic", align_corners=False, antialias=True
        )
    return init_image.clamp(0, 1)


class ClampWithGrad(torch.autograd.Function):
    """Clamp in the forward pass; in the backward pass let the gradient through only where it
    points back into range (the VQGAN+CLIP trick, so clamped pixels can still recover)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        # A descent step moves x by -grad: keep the gradient where that step re-enters [lo, hi].
        inward = (grad * (x - x.clamp(ctx.lo, ctx.hi))) >= 0
        return grad * inward, None, None


def clamp_with_grad(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Clamp ``x`` to [lo, hi] with the inward-only gradient of :class:`ClampWithGrad`."""
    return ClampWithGrad.apply(x, lo, hi)


def parse_options(options_class: type, options: dict[str, Any], generator: str) -> Any:
    """Typed generator options: ``options`` (from the CLI, a recipe or Python) as an ``options_class``
    dataclass instance. Strings become the field's type (``"3"`` -> 3, ``"true"`` -> True,
    ``"0.2,0.5"`` -> [0.2, 0.5]); unknown names and bad values are one line of error."""
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ClipstudioError(f"generator '{generator}' has no option(s): {', '.join(unknown)}; "
                              f"it takes: {', '.join(fields) or 'none'}")
    typed = {}
    for name, value in options.items():
        default = getattr(options_class(), name)
        try:
            typed[name] = _typed_value(value, default)
        except (TypeError, ValueError):
            raise ClipstudioError(f"generator '{generator}' option {name} must be like {default!r}, "
                                  f"got {value!r}") from None
    return options_class(**typed)


def _typed_value(value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` (None defaults take any value)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    if isinstance(default, (tuple, list)):
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(float(v) for v in items)
    if isinstance(default, int):
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    if isinstance(default, float):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        return number
    return str(value)
