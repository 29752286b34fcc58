"""``clipstudio compare``: the CLIP-guided optimizer and a CFG diffusion model on the same prompts and seeds.

Every setting of both halves is validated before anything runs. By default the shapes world is compared with
itself (its recipe guided by ``shapes-guide``, its ``shapes-diffusion`` model, scored by ``shapes-eval``);
``--clip``, ``--pipeline`` and ``--eval-clip`` compare a real setup, where check pass rates are reported only
for shapes-world prompts.
"""
from __future__ import annotations

import argparse

from ..diffusion.config import OPTIONAL_TYPES, DiffuseConfig
from ..errors import ClipstudioError
from ._options import add_dataclass_options, add_threads_option, apply_threads, typed_settings
from .diffuse import HELPS as DIFFUSE_HELPS
from .diffuse import with_default_model

DIFFUSION_FIELDS_SKIPPED = ("prompt", "seed", "n", "scale", "device")


def register(sub: argparse._SubParsersAction) -> None:
    from ..worlds.shapes.compare import DEFAULT_EVALUATOR, WORLD_RECIPE

    parser = sub.add_parser("compare", help="compare CLIP guidance and CFG diffusion on prompts",
                            description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default="compare", help="folder for report.md, results.json, sheet.png")
    parser.add_argument("--prompts", type=int, default=10, help="number of canonical shapes-world prompts")
    parser.add_argument("--prompt-seed", type=int, default=7, help="seed of the canonical prompt set")
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; replaces --prompts)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..K-1 per prompt")
    group = parser.add_argument_group("the CLIP-guided half")
    group.add_argument("--recipe", default=None,
                       help=f"recipe of the CLIP-guided runs (default: '{WORLD_RECIPE}' unless --clip is given)")
    group.add_argument("--clip", action="append", default=None, help="guiding CLIP SPEC (repeat to ensemble)")
    group.add_argument("--generator", action="append", default=None,
                       help="one CLIP-guided method per generator (repeatable; default: the recipe's)")
    group.add_argument("--clip-steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    group = parser.add_argument_group("the diffusion half")
    add_dataclass_options(group, DiffuseConfig, helps=DIFFUSE_HELPS, skip=DIFFUSION_FIELDS_SKIPPED,
                          flags={"steps": "diffusion-steps"}, types=OPTIONAL_TYPES)
    group.add_argument("--extra-model", action="append", default=None,
                       help="another embedded diffusion model as one more method 'cfg-diffusion:MODEL' "
                            "(repeatable; e.g. shapes-diffusion-reward)")
    parser.add_argument("--device", default=None, help="device of both halves (default: each one's default)")
    parser.add_argument("--eval-clip", default=DEFAULT_EVALUATOR, help="the CLIP that scores (never the guide)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the methods in this process (faster; peak memory is then not each method's own)")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def build_plan(args: argparse.Namespace):
    """The validated plan of a compare command line (nothing is generated yet)."""
    from ..worlds.shapes import compare as C
    from ..worlds.shapes.prompts import prompt_set

    if args.prompts <= 0 or args.seeds <= 0:
        raise ClipstudioError(f"--prompts and --seeds must be positive, got {args.prompts} and {args.seeds}")
    prompts = args.prompt or prompt_set(args.prompts, args.prompt_seed)
    overrides = {}
    if args.clip:
        overrides["clip"] = list(args.clip)
    if args.clip_steps is not None:
        overrides["steps"] = args.clip_steps
    if args.device:
        from ..devices import resolve_device

        overrides["device"] = str(resolve_device(args.device))   # the guidance loop takes a concrete device
    diffuse_settings = typed_settings(args, DiffuseConfig)
    diffuse_settings.pop("device", None)         # --device is the option of both halves, not a diffusion field
    if args.device:
        diffuse_settings["device"] = args.device
    diffuse = with_default_model(DiffuseConfig.from_dict(diffuse_settings))
    recipe = args.recipe or (None if args.clip else C.WORLD_RECIPE)
    methods = [f"clip-guided:{g}" for g in args.generator] if args.generator else ["clip-guided"]
    methods += ["cfg-diffusion"] + [f"cfg-diffusion:{m}" for m in args.extra_model or ()]
    return C.plan_compare(prompts, list(range(args.seeds)), methods, recipe=recipe,
                          clip_overrides=overrides, diffuse=diffuse, evaluator=args.eval_clip)


def run(args: argparse.Namespace) -> int:
    from ..worlds.shapes.compare import compare

    apply_threads(args.threads)
    plan = build_plan(args)                      # every setting of both halves, before any work
    results = compare(plan, args.out, threads=args.threads, isolated=not args.in_process)
    for m, r in results.items():
        rate = "n/a" if r["check_pass_rate"] is None else f"{r['check_pass_rate']:.3f}"
        print(f"{m}: check pass {rate}, eval-CLIP {r['eval_clip_score']:.4f}, "
              f"{r['seconds_per_image']:.2f} s/image, peak {r['peak_rss_mb']:.0f} MB")
    print(f"wrote {args.out}/report.md, {args.out}/results.json and {args.out}/sheet.png")
    return 0
