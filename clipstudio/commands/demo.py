"""``clipstudio demo``: toy demos of the maths. Each ``demo WHAT`` lives in its own module ``demo_WHAT.py`` with
``register(subparsers)`` and ``run(args)``, like the top-level commands."""
from __future__ import annotations

import argparse
import importlib

WHATS = ('spiral',)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="toy demos of the maths: " + ", ".join(WHATS))
    whats = parser.add_subparsers(dest="what", required=True)
    for what in WHATS:
        importlib.import_module(f"{__package__}.demo_{what}").register(whats)
