"""``clipstudio eval ranking``: how well a ranker (a CLIP model, or a reward of reward fine-tuning) picks among
N candidates, judged by the world's check: best-of-N pass rate, any-of-N (the ceiling) and within-prompt AUC.
The figures come from :func:`clipstudio.worlds.shapes.best_of_n.best_of_n`."""
from __future__ import annotations

import argparse
import json
import math

from ..errors import ClipstudioError
from ._options import add_threads_option, apply_threads
from .diffuse import default_model


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ranking", help="how well a CLIP model or a reward picks the best of N candidates "
                                            "(best-of-N pass rate, any-of-N, AUC)")
    parser.add_argument("--backend", choices=("diffuse", "generate"), default="diffuse",
                        help="candidates from an embedded diffusion model, or from guided generation seeds")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="--backend diffuse: an embedded diffusion model "
                                                      "(default: the world's)")
    source.add_argument("--checkpoint", default=None, help="--backend diffuse: a shapes-diffusion checkpoint "
                                                           "file instead (a fine-tune's OUT.pt)")
    parser.add_argument("--guidance", type=float, default=None, help="--backend diffuse: CFG weight "
                                                                     "(default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="--backend diffuse: sampler steps "
                                                                "(default: the model's)")
    parser.add_argument("--rankers", default="shapes-guide,shapes-guide-contrast,shapes-eval",
                        help="comma-separated: reward names (clipstudio train reward) or CLIP models")
    parser.add_argument("--candidates", type=int, default=8, help="N, candidates per prompt")
    parser.add_argument("--prompts", type=int, default=50, help="prompts of the set")
    parser.add_argument("--prompt-seed", type=int, default=2024, help="seed of the prompt set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the candidates")
    parser.add_argument("--json", default=None, help="also write the figures here")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def validate(args: argparse.Namespace) -> list[str]:
    """Every option checked before a model loads; returns the ranker names."""
    if args.candidates < 1 or args.prompts < 1:
        raise ClipstudioError(f"--candidates and --prompts must be 1 or more, got {args.candidates} and {args.prompts}")
    if args.steps is not None and args.steps < 1:
        raise ClipstudioError(f"--steps must be a positive integer, got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ClipstudioError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.backend != "diffuse" and (args.model or args.checkpoint or args.guidance is not None
                                      or args.steps is not None):
        raise ClipstudioError("--model, --checkpoint, --guidance and --steps apply to --backend diffuse only")
    rankers = [name.strip() for name in args.rankers.split(",") if name.strip()]
    if not rankers:
        raise ClipstudioError("--rankers needs at least one name")
    return rankers


def powers_of_two_to(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    return sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n})


def run(args: argparse.Namespace) -> int:
    from ..images import atomic_write, check_writable
    from ..worlds.shapes.best_of_n import best_of_n

    apply_threads(args.threads)
    rankers = validate(args)
    if args.json:
        check_writable(args.json)
    diffuse = {k: v for k, v in (("guidance", args.guidance), ("steps", args.steps)) if v is not None}
    diffuser = None
    if args.checkpoint:
        from ..worlds.shapes.diffusion_model import load_shapes_backend
        diffuser = load_shapes_backend(args.checkpoint)
    report = best_of_n(args.backend, n_prompts=args.prompts, prompt_seed=args.prompt_seed,
                       ns=powers_of_two_to(args.candidates), rankers=rankers, seed=args.seed,
                       model=args.checkpoint or args.model or default_model(), diffuse=diffuse, diffuser=diffuser)
    print(format_report(report))
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return 0


def format_report(report: dict) -> str:
    """The report as a table: one row per ranker, a column per N, then the AUC."""
    ns = list(report["any_of_n"])
    head = f"{'best of N':24s}" + "".join(f"{n:>7}" for n in ns) + "    AUC"
    rows = [f"{name:24s}" + "".join(f"{report['best_of_n'][name][n]:7.3f}" for n in ns)
            + (f"  {auc:.3f}" if (auc := report["auc"][name]) is not None else "      -")
            for name in report["best_of_n"]]
    rows.append(f"{'any of N (ceiling)':24s}" + "".join(f"{report['any_of_n'][n]:7.3f}" for n in ns))
    source = report["model"] or "guided generation"
    return "\n".join([f"{report['prompts']} prompts x {report['candidates']} candidates from {source} "
                      f"{report['diffuse'] or ''}; a random candidate passes {report['candidate_pass_rate']:.3f}",
                      head, *rows])
