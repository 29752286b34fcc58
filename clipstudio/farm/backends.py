"""What a farm job runs. Each backend is one entry of :data:`BACKENDS`: ``resolve`` turns a job's prompt, seed,
recipe and settings into the full settings its key is made from (in the driver, so bad input fails before any
work), and ``run`` makes the image from those settings (in a worker, whose models stay loaded between jobs).
"""
from __future__ import annotations

import io
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin

from .._version import __version__
from ..embedded import world_default
from ..errors import ClipstudioError
from ..images import SETTINGS_KEY

# The offline defaults come from the worlds' data (world.json), as for `clipstudio generate PROMPT`.
DEFAULT_RECIPE = world_default("recipe")
DEFAULT_DIFFUSION_MODEL = world_default("diffusion")
DEFAULT_SCORE_CLIP = world_default("clip")  # scores jobs when the file names no rank clip and no generate job does


@dataclass(frozen=True)
class Backend:
    """One kind of job: ``resolve(prompt, seed, recipe, settings) -> full settings`` and
    ``run(full settings, device or None) -> (image, PNG metadata)``."""

    resolve: Callable[[str, int, str | None, dict[str, Any]], dict[str, Any]]
    run: Callable[[dict[str, Any], str | None], tuple[Image.Image, dict[str, Any]]]
    default_recipe: str | None = None  # None: the backend takes no recipe
    about: str = ""


# --------------------------------------------------------------------------- generate

def resolve_generate(prompt: str, seed: int, recipe: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """A guided run's full settings: the recipe (default ``shapes``), then the job's settings, validated."""
    from ..config import GenerateConfig
    from ..recipes import recipe_settings
    from ..studio import validate_config

    if settings.get("candidates", 1) != 1:
        raise ClipstudioError("candidates: a batch job is one image; sweep seeds and use rank.keep instead")
    merged = recipe_settings(recipe or DEFAULT_RECIPE, {**settings, "prompt": prompt, "seed": seed})
    return validate_config(GenerateConfig.from_dict(merged)).to_full_dict()


def run_generate(settings: dict[str, Any], device: str | None) -> tuple[Image.Image, dict[str, Any]]:
    """One guided run; its CLIP models come from :func:`clipstudio.guide.clip.load_clip`'s per-process cache."""
    from ..config import GenerateConfig
    from ..studio import Studio

    config = GenerateConfig.from_dict({**settings, **({"device": device} if device else {})})
    result = Studio(config).run()
    return result.image, result.metadata()


# --------------------------------------------------------------------------- diffuse

DIFFUSE_SETTINGS = {"model": DEFAULT_DIFFUSION_MODEL, "negative": None, "guidance": None, "steps": None,
                    "sampler": None, "eta": 0.0, "guidance_rescale": None, "device": "cpu"}
_DIFFUSION_MODELS: dict[tuple[str, str], Any] = {}  # loaded once per worker process


def resolve_diffuse(prompt: str, seed: int, recipe: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """A diffusion sample's full settings (None: the model's default); recipes do not apply."""
    unknown = sorted(set(settings) - set(DIFFUSE_SETTINGS))
    if unknown:
        raise ClipstudioError(f"unknown diffuse setting(s): {', '.join(unknown)}; "
                              f"choose from: {', '.join(sorted(DIFFUSE_SETTINGS))}")
    return {**DIFFUSE_SETTINGS, **settings, "prompt": prompt, "seed": seed}


def run_diffuse(settings: dict[str, Any], device: str | None) -> tuple[Image.Image, dict[str, Any]]:
    """One sample of an embedded diffusion model, loaded the first time this process needs it."""
    from ..diffusion.backend import load_embedded_backend, to_pil

    device = device or settings["device"]
    key = (settings["model"], device)
    if key not in _DIFFUSION_MODELS:
        _DIFFUSION_MODELS[key] = load_embedded_backend(settings["model"], device=device)
    images = _DIFFUSION_MODELS[key].generate(
        settings["prompt"], negative=settings["negative"], guidance=settings["guidance"], steps=settings["steps"],
        seed=settings["seed"], sampler=settings["sampler"], eta=settings["eta"],
        guidance_rescale=settings["guidance_rescale"])
    return to_pil(images)[0], {"version": __version__, "settings": {**settings, "device": device}}


BACKENDS: dict[str, Backend] = {
    "generate": Backend(resolve_generate, run_generate, default_recipe=DEFAULT_RECIPE,
                        about="CLIP-guided generation from a recipe (default: shapes)"),
    "diffuse": Backend(resolve_diffuse, run_diffuse, about="a sample of an embedded CFG diffusion model"),
}


def list_backends() -> list[str]:
    """The backend names a job file may use."""
    return sorted(BACKENDS)


def backend(name: str) -> Backend:
    """The registry entry for ``name``; one line of error naming the choices otherwise."""
    if name not in BACKENDS:
        raise ClipstudioError(f"unknown backend '{name}'; choose one of: {', '.join(list_backends())}")
    return BACKENDS[name]


# --------------------------------------------------------------------------- in a worker

def png_bytes(image: Image.Image, metadata: dict[str, Any]) -> bytes:
    """The PNG file :func:`clipstudio.images.save_png` would write, as bytes (the driver writes it)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(SETTINGS_KEY, json.dumps(metadata, sort_keys=True))
    prompt = metadata.get("settings", {}).get("prompt")
    if prompt:
        info.add_text("Description", prompt)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def one_line(err: BaseException) -> str:
    """An exception as the one line the manifest records."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = text if isinstance(err, ClipstudioError) else f"{type(err).__name__}: {text}".rstrip(": ")
    return line[:300]


def score_image(image: Image.Image, prompt: str, clip: str, device: str) -> float:
    """The CLIP score ``clipstudio generate --candidates`` ranks by (weighted prompts, negatives subtract)."""
    from ..guide.prompts import parse_prompts
    from ..ranking import clip_scores

    return float(clip_scores([image], parse_prompts(prompt), clip, device)[0])


def execute(job: dict[str, Any], device: str | None = None) -> dict[str, Any]:
    """Run one job in a worker: the PNG bytes (with the job's key in its metadata) and its score, or the error
    as one line. A job's error is data, not an exception: the driver decides whether to retry."""
    start = time.perf_counter()
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        image, metadata = backend(job["backend"]).run(job["settings"], device)
        metadata["farm"] = {"key": job["key"], "backend": job["backend"], "recipe": job["recipe"]}
        scores = {}
        if job.get("score_clip"):
            scores[job["score_clip"]] = score_image(image, job["prompt"], job["score_clip"],
                                                    device or job["settings"].get("device", "cpu"))
        return {"status": "done", "png": png_bytes(image, metadata), "scores": scores,
                "seconds": time.perf_counter() - start, **where}
    except Exception as err:  # noqa: BLE001 - any failure of a job is recorded, the worker lives on
        return {"status": "error", "error": one_line(err), "seconds": time.perf_counter() - start, **where}
