"""Generator registry. Entries name an import path so optional backends load only when asked for."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ClipstudioError, missing_extra
from .base import Generator, clamp_with_grad, resize_init, validate_size


@dataclass(frozen=True)
class GeneratorEntry:
    """A registered generator: where its class lives, the extra it needs, and one line about it."""

    target: str  # "module:ClassName", imported lazily
    extra: str | None
    summary: str


GENERATORS: dict[str, GeneratorEntry] = {
    "pixels": GeneratorEntry(
        "clipstudio.generators.pixels:PixelGenerator", None,
        "raw pixels: RGB, a Fourier/colour-decorrelated image, or logits over a palette (parametrization=)",
    ),
    "primitives": GeneratorEntry(
        "clipstudio.generators.primitives:PrimitivesGenerator", None,
        "a few flat-coloured differentiable shapes (circle/square/triangle) over a background, CLIPDraw-style",
    ),
    "vqgan": GeneratorEntry(
        "clipstudio.generators.vqgan:VQGANGenerator", "vqgan",
        "VQGAN latents from a taming-transformers checkpoint (options: model=NAME or checkpoint=PATH config=PATH)",
    ),
    "latent": GeneratorEntry(
        "clipstudio.generators.latent:LatentGenerator", "diffusion",
        "latents of a diffusion autoencoder: the TAESD family, TAEF2, or Stable Diffusion's VAE (option vae=NAME)",
    ),
}


def list_generators() -> list[str]:
    """Names of the registered generators."""
    return sorted(GENERATORS)


def generator_class(name: str) -> type[Generator]:
    """The generator class registered as ``name``; a missing optional dependency is a one-line error."""
    if name not in GENERATORS:
        raise ClipstudioError(f"unknown generator '{name}'; choose one of: {', '.join(list_generators())}")
    entry = GENERATORS[name]
    module_name, class_name = entry.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if entry.extra and err.name and not err.name.startswith("clipstudio"):
            raise missing_extra(err.name, entry.extra, f"generator '{name}'") from None
        raise
    return getattr(module, class_name)


def build_generator(
    name: str, size: tuple[int, int], init_image: torch.Tensor | None = None, **options: Any
) -> Generator:
    """Build the generator registered as ``name`` for an output of ``size`` = (width, height)."""
    return generator_class(name)(size, init_image=init_image, **options)


__all__ = [
    "GENERATORS", "Generator", "GeneratorEntry", "build_generator", "clamp_with_grad",
    "generator_class", "list_generators", "resize_init", "validate_size",
]
