"""``clipstudio diffuse``: sample a classifier-free-guidance diffusion model (a world's embedded model, or a
Stable-Diffusion-style diffusers pipeline). Every output PNG records its full settings, so
``clipstudio diffuse --from out.png -o again.png`` reruns it bit for bit (same device and library versions)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..diffusion.config import OPTIONAL_TYPES, DiffuseConfig
from ..diffusion.sampling import SAMPLERS, list_samplers
from ..errors import ClipstudioError
from ._options import S, add_dataclass_options, add_threads_option, apply_threads, typed_settings


def default_model() -> str:
    """What `diffuse PROMPT` samples when the user names no --model and no --pipeline: the first world's
    ``default_diffusion`` (world.json data; the shapes world's model works offline on a CPU)."""
    from ..embedded import world_default
    return world_default("diffusion")


COMMAND = "diffuse"

HELPS = {
    "negative": "negative prompt (replaces the empty unconditional prompt)",
    "guidance": "CFG weight w (None: the model's)",
    "guidance_rescale": "phi in [0, 1]: rescale the guided prediction's std to the conditional one's "
                        "(Lin et al. 2023; None: the model's)",
    "steps": "sampling steps (None: the model's)",
    "sampler": f"one of: {', '.join(list_samplers())} (None: the model's)",
    "eta": "DDIM stochasticity",
    "n": "images in the batch (OUT_0.png ... when more than one)",
    "model": "an embedded diffusion model (see 'clipstudio models'; None: the world's default_diffusion)",
    "pipeline": "a Stable-Diffusion-style pipeline directory or hub name, instead of --model",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "scale": "nearest-neighbour upscaling of the saved PNGs",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(COMMAND, help="sample the CFG diffusion backend")
    parser.add_argument("prompt", nargs="?", default=S, help="the text prompt")
    parser.add_argument("-o", "--output", default="diffuse.png", help="output PNG (written atomically)")
    parser.add_argument("--from", dest="from_png", default=None,
                        help="rerun the settings stored in a PNG that diffuse wrote (typed options override them)")
    add_dataclass_options(parser, DiffuseConfig, helps=HELPS, skip=("prompt",), types=OPTIONAL_TYPES)
    parser.add_argument("--list-samplers", action="store_true", help="list the samplers and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """A --from PNG's settings, then each option the user typed."""
    settings: dict[str, Any] = {}
    if args.from_png:
        settings.update(read_diffuse_settings(args.from_png))
    settings.update(typed_settings(args, DiffuseConfig))
    if "prompt" in vars(args):
        settings["prompt"] = args.prompt
    return settings


def read_diffuse_settings(path: str) -> dict[str, Any]:
    """The settings a diffuse PNG records; a PNG of another command is a one-line error."""
    from ..images import read_png_settings

    meta = read_png_settings(path)
    if meta.get("command") != COMMAND:
        raise ClipstudioError(f"{path} was not made by 'clipstudio diffuse' (try 'clipstudio generate --from')")
    return dict(meta.get("settings") or {})


def output_paths(output: str | Path, n: int) -> list[Path]:
    """OUT for one image, OUT_0.png ... OUT_{n-1}.png for a batch."""
    out = Path(output)
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(n)]


def with_default_model(config: DiffuseConfig) -> DiffuseConfig:
    """The config with the command's default model when it names neither a model nor a pipeline."""
    return config if config.model or config.pipeline else config.replace(model=default_model())


def diffuse_images(config: DiffuseConfig, backend, progress: bool = False) -> list:
    """PIL images for a resolved config (one per batch row), upscaled by ``config.scale``."""
    from PIL import Image

    from ..images import tensor_to_pil

    from ..diffusion.backend import sample_config

    images = sample_config(config, backend, progress)
    pils = [tensor_to_pil(image) for image in images]
    if config.scale > 1:
        pils = [im.resize((im.width * config.scale, im.height * config.scale), Image.NEAREST) for im in pils]
    return pils


def run(args: argparse.Namespace) -> int:
    if args.list_samplers:
        for name, entry in SAMPLERS.items():
            print(f"{name:12s} {entry.prediction:8s} {entry.scheduler:34s} {entry.about}")
        return 0
    from .._version import __version__
    from ..images import check_writable, save_png

    apply_threads(args.threads)
    from ..diffusion.backend import load_config_backend, resolve_model_defaults

    config = with_default_model(DiffuseConfig.from_dict(settings_from_args(args))).validate()  # before any work
    paths = [check_writable(p) for p in output_paths(args.output, config.n)]
    backend = load_config_backend(config)
    config = resolve_model_defaults(config, backend).validate()
    pils = diffuse_images(config, backend, progress=not args.quiet and sys.stderr.isatty())
    for index, (image, path) in enumerate(zip(pils, paths)):
        meta = {"version": __version__, "command": COMMAND, "settings": config.to_full_dict(), "index": index}
        save_png(image, path, meta)
        print(f"wrote {path}")
    return 0
