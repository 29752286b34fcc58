"""``clipstudio bench``: seconds per step of generate's loop against its floor, the classic VQGAN+CLIP setting
beside a plain implementation of it, or the diffusion backend's CFG sampler (see :mod:`clipstudio.benchmark`)."""
from __future__ import annotations

import argparse
import json

from ..config import GenerateConfig
from ..errors import ClipstudioError
from .generate import _merge_mapping_options, add_generate_options, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="time generate's loop (or diffuse's sampler) against its floor")
    add_generate_options(parser)
    parser.add_argument("--backend", choices=("generate", "diffuse"), default="generate")
    parser.add_argument("--preset", choices=("classic",), default=None,
                        help="classic: the VQGAN+CLIP notebooks' step (256 px, ViT-B-32, VQGAN f16 16384, cutn 32, "
                             "pooled cutouts, their augmentations), timed beside a plain implementation of it")
    parser.add_argument("--kornia-baseline", action="store_true",
                        help="also time the same step with the augmentations through kornia's forward "
                             "(--no-fast-augments), in the same rounds: ours_vs_kornia")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each stage of the step beyond the floor alone, in the same rounds (the "
                             "cutouts' draw, views, each augmentation, noise, the optimizer): overhead_parts")
    parser.add_argument("--random-weights", action="store_true",
                        help="real architectures with random weights (nothing downloaded): for timing only")
    parser.add_argument("--repeat", type=int, default=3, help="timed steps (the median is reported)")
    parser.add_argument("--warmup-steps", dest="bench_warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                        help="auto: process CPU seconds on CPU (fair on a shared machine with 1 thread), wall on CUDA")
    parser.add_argument("--diffusion-model", default="shapes-diffusion", help="--backend diffuse: the model")
    parser.add_argument("--diffusion-steps", type=int, default=20, help="--backend diffuse: sampler steps per run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Time the loop and print a table (or JSON)."""
    import torch

    from .. import benchmark

    if args.repeat < 1 or args.bench_warmup < 0:
        raise ClipstudioError(f"--repeat must be at least 1 and --warmup at least 0, got {args.repeat}, {args.bench_warmup}")
    if not 0 <= args.threads <= 1024:
        raise ClipstudioError(f"--threads must be between 0 (torch's default) and 1024, got {args.threads}")
    generate_only = [flag for flag, given in (("--preset", args.preset), ("--kornia-baseline", args.kornia_baseline),
                                              ("--breakdown", args.breakdown)) if given]
    if args.backend == "diffuse" and generate_only:
        raise ClipstudioError(f"{generate_only[0]} times generate's step; it does not apply to --backend diffuse")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "diffuse":
        result = benchmark.bench_diffuse(args.diffusion_model, steps=args.diffusion_steps, repeat=args.repeat,
                                         warmup=args.bench_warmup, device=getattr(args, "device", "auto"), clock=args.clock)
    else:
        result = benchmark.bench_studio(_config(args), repeat=args.repeat, warmup=args.bench_warmup, clock=args.clock,
                                        plain=args.preset == "classic", trust_checkpoint=args.trust_checkpoint,
                                        kornia_baseline=args.kornia_baseline, breakdown=args.breakdown)
    print(json.dumps(result.to_dict(), indent=1) if args.json else benchmark.format_table(result))
    return 0


def _config(args: argparse.Namespace) -> GenerateConfig:
    """The preset's settings (if any) under the recipe's, then what the user typed; random weights last."""
    from .. import benchmark

    settings = settings_from_args(args) if args.preset is None else {}
    if args.preset:
        settings = {**benchmark.preset_settings(args.preset), **_typed_only(args)}
        _merge_mapping_options(settings, vars(args))
        if "checkpoint" in settings.get("generator_options", {}):  # a model file instead of the named one
            settings["generator_options"].pop("model", None)
    settings.setdefault("prompt", benchmark.DEFAULT_PROMPT)
    if args.random_weights:
        settings = benchmark.with_random_weights(settings)
    return GenerateConfig.from_dict(settings)


def _typed_only(args: argparse.Namespace) -> dict:
    """With a preset, only the options typed on the command line change it (no default recipe)."""
    from ._options import typed_settings

    typed = typed_settings(args, GenerateConfig)
    given = vars(args)
    if "prompt" in given:
        typed["prompt"] = given["prompt"]
    if "size" in given:
        typed["width"], typed["height"] = given["size"]
    return typed
