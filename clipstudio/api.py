"""The Python API a notebook uses: :func:`make_config` and :func:`generate`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .animation import AnimationResult, AnimationStudio
from .animation import animate as _animate
from .config import GenerateConfig
from .keyframes import AnimateConfig
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


def animate(prompt: str = "", *, animation: AnimateConfig | dict[str, Any] | None = None, output: str | None = None,
            frames_dir: str | None = None,
            callback: Callable[[AnimationStudio, int, Any], Any] | None = None, checkpoint: str | None = None,
            progress: bool = False, **options: Any) -> AnimationResult:
    """Render an animation (zoom/pan/rotate, prompt/lr/cutout schedules): ``animation`` is an
    :class:`AnimateConfig` or its settings as a dict, ``options`` are :class:`GenerateConfig` fields.

    ``callback(studio, frame, image)`` runs after each frame (the PIL image just written); returning False
    stops. Frames go to ``frames_dir`` (default: beside ``output``), the video to ``output`` (.mp4 or .gif).
    """
    if not isinstance(animation, AnimateConfig):
        animation = AnimateConfig.from_dict(animation or {})
    keys = animation.prompt_keys()
    config = make_config(prompt or (keys[0][1] if keys else ""), **options)
    return _animate(config, animation, output, frames_dir, callback, checkpoint, progress)
