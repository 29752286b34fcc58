"""``clipstudio eval clip``: zero-shot attribute accuracy of a CLIP model on freshly rendered shapes-world
scenes (background, colour, shape, size, position, relation)."""
from __future__ import annotations

import argparse

from ._options import add_threads_option, apply_threads


def register(sub: argparse._SubParsersAction) -> None:
    from ..worlds.shapes.zeroshot import DEFAULT_SEED

    parser = sub.add_parser("clip", help="zero-shot attribute accuracy of a CLIP model in the shapes world",
                            description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-guide",
                        help="any --clip value: an embedded name, NAME:PRETRAINED, NAME:PATH (default: shapes-guide)")
    parser.add_argument("-n", type=int, default=200, help="scenes per grammar form (default: 200)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of the held-out scenes (default: {DEFAULT_SEED}, which training never uses)")
    parser.add_argument("--checkpoint", default=None, help="load this file into --model's architecture")
    parser.add_argument("--device", default="cpu")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the per-attribute accuracy table."""
    from ..devices import resolve_device
    from ..errors import ClipstudioError
    from ..worlds.shapes.zeroshot import evaluate_clip, format_table

    if args.n <= 0:
        raise ClipstudioError(f"-n must be positive, got {args.n}")
    apply_threads(args.threads)
    acc = evaluate_clip(args.model, n=args.n, seed=args.seed, checkpoint=args.checkpoint,
                        device=str(resolve_device(args.device)))
    print(format_table(args.model, acc, args.n))
    return 0
