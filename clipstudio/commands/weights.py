"""``clipstudio weights``: list the known model files, or fetch some by name."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("weights", help="list known model files, or fetch some by name")
    parser.add_argument("names", nargs="*", help="weights names (see the list), e.g. taef2.decoder")
    parser.add_argument("--weights-dir", default=None)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """List the weights registry, or fetch files by name into the cache (or check a --weights-dir)."""
    from .. import weights

    if not args.names:
        for entry in weights.list_weights():
            sha = entry.sha256[:12] if entry.sha256 else "unverified"
            print(f"{entry.name:34s} {entry.filename:32s} sha256 {sha:12s} {entry.license}")
        print(f"cache: {weights.cache_dir()}  offline folder: CLIPSTUDIO_WEIGHTS or --weights-dir")
        return 0
    for name in args.names:
        print(f"{name}: {weights.fetch(name, weights_dir=args.weights_dir)}")
    return 0
