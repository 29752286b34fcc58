"""The Python API a notebook uses: :func:`make_config` and :func:`generate`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import GenerateConfig
from .errors import ClipstudioError
from .ranking import generate_ranked
from .studio import GenerateResult, StepInfo, Studio


def make_config(prompt: str = "", **options: Any) -> GenerateConfig:
    """A :class:`GenerateConfig` from keyword options; ``size=(W, H)`` is accepted for width and height."""
    if "size" in options:
        size = options.pop("size")
        try:
            options["width"], options["height"] = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ClipstudioError(f"size must be (width, height), got {size!r}") from None
    return GenerateConfig.from_dict({"prompt": prompt, **options})


def generate(prompt: str, *, callback: Callable[[Studio, StepInfo], Any] | None = None, progress: bool = False,
             **options: Any) -> GenerateResult:
    """Generate an image for ``prompt``; options are :class:`GenerateConfig` fields (``size=(W, H)`` too).

    With ``candidates=N`` > 1, N seeds run and the image the first CLIP model scores best is returned.
    """
    config = make_config(prompt, **options)
    if config.candidates > 1:
        return generate_ranked(config)[0][1]
    return Studio(config).run(callback=callback, progress=progress)
