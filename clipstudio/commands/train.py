"""``clipstudio train``: retrain a model. Each ``train WHAT`` lives in its own module ``train_WHAT.py`` with
``register(subparsers)`` and ``run(args)``, like the top-level commands."""
from __future__ import annotations

import argparse
import importlib

WHATS = ('clip', 'diffusion', 'robust', 'reward', 'decoder')


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="retrain a model: " + ", ".join(WHATS))
    whats = parser.add_subparsers(dest="what", required=True)
    for what in WHATS:
        importlib.import_module(f"{__package__}.train_{what}").register(whats)
