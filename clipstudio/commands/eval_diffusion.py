"""``clipstudio eval diffusion``: measure a world's diffusion model (check pass rate, guidance sweep, negative
prompt). The figures come from :func:`clipstudio.worlds.shapes.diffusion_model.evaluate`."""
from __future__ import annotations

import argparse
import json
import math

from ..errors import ClipstudioError
from ._options import add_threads_option, apply_threads
from .diffuse import default_model


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("diffusion", help="measure the shapes diffusion model: check pass rate, guidance "
                                              "sweep, negative prompt")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="an embedded diffusion model (default: the world's)")
    source.add_argument("--checkpoint", default=None, help="a shapes-diffusion checkpoint file instead")
    parser.add_argument("--prompts", type=int, default=100, help="canonical prompts for the pass rate (0: skip)")
    parser.add_argument("--prompt-seed", type=int, default=1234, help="seed of the pass rate's prompt set")
    parser.add_argument("--sweep", default="1,2,4,8", help="guidance weights for the sweep ('': skip)")
    parser.add_argument("--sweep-prompts", type=int, default=50)
    parser.add_argument("--negative-seeds", type=int, default=64, help="images per arm of the negative test (0: skip)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--sampler", default=None, help="a sampler fitting the model (default: the model's)")
    parser.add_argument("--steps-sweep", default="",
                        help="step counts, e.g. 5,10,25,50: pass rate and seconds per image on the --prompts set")
    parser.add_argument("--colour-seeds", type=int, default=0,
                        help="images of 'a circle on a white background' whose distinct object colours are counted "
                             "(the diversity check of reward fine-tuning; 0: skip)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG weight of the pass rate (default: the model's)")
    parser.add_argument("--guidance-rescale", type=float, default=None,
                        help="phi of Lin et al.'s guidance rescale for the pass rate and the sweep (default: the model's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the figures here")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def parse_sweep(text: str) -> list[float]:
    """'1,2,4' -> [1.0, 2.0, 4.0]; each weight finite and >= 0."""
    try:
        weights = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ClipstudioError(f"--sweep takes guidance weights separated by commas, got '{text}'") from None
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ClipstudioError(f"--sweep weights must be finite numbers >= 0, got '{text}'")
    return weights


def validate(args: argparse.Namespace) -> list[float]:
    """Every option checked before the model loads; returns the sweep weights."""
    for name in ("prompts", "sweep_prompts", "negative_seeds", "colour_seeds"):
        if getattr(args, name) < 0:
            raise ClipstudioError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        raise ClipstudioError(f"--steps must be a positive integer, got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ClipstudioError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.guidance_rescale is not None and not 0 <= args.guidance_rescale <= 1:
        raise ClipstudioError(f"--guidance-rescale must be in [0, 1], got {args.guidance_rescale}")
    sweep = parse_sweep(args.sweep)
    try:
        args.steps_sweep = [int(v) for v in args.steps_sweep.split(",") if v.strip()]
    except ValueError:
        raise ClipstudioError(f"--steps-sweep takes step counts separated by commas, got '{args.steps_sweep}'") from None
    if any(v < 1 for v in args.steps_sweep) or (args.steps_sweep and args.prompts < 1):
        raise ClipstudioError("--steps-sweep needs positive step counts and --prompts of 1 or more")
    if sweep and args.sweep_prompts < 1:
        raise ClipstudioError("--sweep needs --sweep-prompts of 1 or more")
    return sweep


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..diffusion.backend import load_embedded_backend
    from ..images import atomic_write, check_writable
    from ..worlds.shapes.diffusion_model import evaluate, load_shapes_backend

    apply_threads(args.threads)
    sweep = validate(args)
    if args.json:
        check_writable(args.json)
    device = str(resolve_device(args.device))
    if args.checkpoint:
        backend = load_shapes_backend(args.checkpoint, device=device)
    else:
        args.model = args.model or default_model()
        backend = load_embedded_backend(args.model, device=device)
    figures = evaluate(backend, prompts=args.prompts, sweep=sweep, sweep_prompts=args.sweep_prompts,
                       negative_seeds=args.negative_seeds, steps=args.steps, guidance=args.guidance,
                       guidance_rescale=args.guidance_rescale, sampler=args.sampler, steps_sweep=args.steps_sweep,
                       prompt_seed=args.prompt_seed)
    for failed in figures.get("pass_rate", {}).get("failures", []):
        print(f"  failed: {failed['prompt']}: {'; '.join(failed['failures'])}")
    if args.colour_seeds:
        from ..worlds.shapes.train_reward import colour_spread

        spread = colour_spread(backend, n=args.colour_seeds, guidance=args.guidance, steps=figures["steps"],
                               sampler=figures["sampler"])
        figures["colour_spread"] = spread
        print(f"'{spread['prompt']}': {spread['distinct']} distinct object colours over {spread['n']} seeds "
              f"{spread['counts']}")
    figures = {"model": args.checkpoint or args.model, **figures}
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(figures, indent=2).encode()))
    return 0
