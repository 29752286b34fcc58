"""``clipstudio demo spiral``: DDPM, DDIM, Euler and flow matching, with and without CFG, on a 2-D spiral
(:mod:`clipstudio.demos.spiral`)."""
from __future__ import annotations

import argparse

from ._options import add_threads_option, apply_threads


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("spiral", help="samplers and CFG on a 2-D spiral (trains two tiny models, ~1 min)",
                            description="Train two tiny models on a 3-armed spiral and plot every sampler and CFG.")
    parser.add_argument("-o", "--out", default="spiral.png", help="output PNG (written atomically)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--train-steps", type=int, default=1500, help="training steps per model")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..demos.spiral import run_demo

    apply_threads(args.threads)
    models, stats = run_demo(args.out, steps=args.steps, train_steps=args.train_steps, seed=args.seed)
    print(f"wrote {args.out} (training {models.train_seconds:.1f} s)")
    for key, value in stats.items():
        print(f"  {key}: {value:.4f}")
    return 0
