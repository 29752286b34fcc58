"""``clipstudio eval``: measure models and settings in a world. Each ``eval WHAT`` lives in its own module ``eval_WHAT.py`` with
``register(subparsers)`` and ``run(args)``, like the top-level commands."""
from __future__ import annotations

import argparse
import importlib

WHATS = ('clip', 'generate', 'diffusion', 'robust', 'ranking')


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="measure models and settings in a world: " + ", ".join(WHATS))
    whats = parser.add_subparsers(dest="what", required=True)
    for what in WHATS:
        importlib.import_module(f"{__package__}.eval_{what}").register(whats)
