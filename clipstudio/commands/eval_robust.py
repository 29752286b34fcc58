"""``clipstudio eval robust``: a CLIP model's zero-shot accuracy in the shapes world, clean and under PGD at a few
radii, and its over-optimization gap as a guide: the guide distance of generated images minus that of true
renders of the same prompts, next to the independent evaluator's score and the pass rate."""
from __future__ import annotations

import argparse
import json

from ._options import add_threads_option, apply_threads
from .eval_generate import add_generate_options, generate_settings

# The run whose over-optimization the gap measures by default: pure gradient, pixels from noise.
PURE_GRADIENT = {"generator": "pixels", "layout": "none", "search": 0}


def register(sub: argparse._SubParsersAction) -> None:
    from ..guide.robust import NORMS
    from ..worlds.shapes.zeroshot import DEFAULT_SEED

    parser = sub.add_parser("robust", help="zero-shot accuracy under attack and over-optimization gap of a CLIP",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-guide", help="any --clip value (default: shapes-guide)")
    parser.add_argument("-n", type=int, default=50, help="scenes per grammar form (default: 50)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the scenes (default: {DEFAULT_SEED})")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0],
                        help="attack radii in units of 1/255 (default: 0 1 2 4; 0 is clean)")
    parser.add_argument("--norm", choices=NORMS, default="linf", help="threat model (default: linf)")
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations (default: 10)")
    parser.add_argument("--gap-n", type=int, default=10,
                        help="prompts generated with --model as the guide for the gap (default: 10; 0: skip)")
    parser.add_argument("--prompt-seed", type=int, default=1234, help="seed of the prompt set (default: 1234)")
    parser.add_argument("--recipe", default="shapes", help="recipe of the generations (default: shapes)")
    add_generate_options(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a GenerateConfig setting on top of the recipe (pure-gradient pixels unless named)")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the accuracy table (per radius), then the generation summary with the gap."""
    from ..errors import ClipstudioError
    from ..guide.clip import load_clip
    from ..recipes import recipe_config
    from ..studio import validate_config
    from ..worlds.shapes.adherence import evaluate_generation
    from ..worlds.shapes.prompts import prompt_set
    from ..worlds.shapes.robust_eval import attacked_accuracy, format_robust_table

    if args.n < 1 or args.gap_n < 0 or args.pgd_steps < 0 or not all(0 <= e <= 255 for e in args.eps):
        raise ClipstudioError(f"-n must be >= 1, --gap-n and --pgd-steps >= 0 and --eps in [0, 255], got -n {args.n}, "
                              f"--gap-n {args.gap_n}, --pgd-steps {args.pgd_steps}, --eps {args.eps}")
    settings = {**PURE_GRADIENT, "clip": [args.model], **generate_settings(args)}
    prompts = prompt_set(args.gap_n, args.prompt_seed) if args.gap_n else []
    if prompts:
        validate_config(recipe_config(args.recipe, prompts[0], **settings))
    apply_threads(args.threads)
    guide = load_clip(args.model)
    by_eps = {e: attacked_accuracy(guide, args.n, args.seed, e, args.norm, args.pgd_steps) for e in args.eps}
    summary = evaluate_generation(prompts, (0,), None, args.recipe, **settings).summary() if prompts else {}
    if args.json:
        print(json.dumps({"model": args.model, "accuracy": {str(e): a for e, a in by_eps.items()},
                          "generation": summary, "settings": settings}, indent=1))
        return 0
    print(format_robust_table(args.model, by_eps, args.n, args.norm, args.pgd_steps))
    if summary:
        keys = ("pass_rate", "evaluator_score", "evaluator_score_reference", "guide_distance",
                "guide_distance_reference", "over_optimization_gap", "seconds_per_image")
        print(f"generation with {args.model} as the guide ({json.dumps(settings)}), {len(prompts)} prompts:")
        print(json.dumps({k: round(summary[k], 4) for k in keys}, indent=1))
    return 0
