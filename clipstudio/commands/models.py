"""``clipstudio models``: what can be named: generators, CLIP models, losses, augments, recipes."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list generators, CLIP models, losses, augments and recipes")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import embedded
    from ..generators import GENERATORS
    from ..guide.cutouts import list_augments
    from ..losses import list_losses
    from ..recipes import list_recipes

    print("generators:")
    for name, entry in sorted(GENERATORS.items()):
        extra = f" [needs clipstudio[{entry.extra}]]" if entry.extra else ""
        print(f"  {name:10s} {entry.summary}{extra}")
    print("embedded models (from worlds):")
    for name, model in embedded.embedded_models().items():
        state = f"{model.checkpoint.stat().st_size / 1e6:.1f} MB" if model.checkpoint.is_file() else "missing"
        print(f"  {name:18s} {model.kind:9s} {state:9s} {model.about}")
    from ..guide.clip import HUB_CLIPS

    print("robust CLIPs on the Hugging Face hub (downloaded on first use; any hf-hub:ORG/REPO of open_clip's layout):")
    for name, about in HUB_CLIPS.items():
        print(f"  {name:26s} {about}")
    print("open_clip models: any NAME[:PRETRAINED] from open_clip (e.g. ViT-B-32:openai), NAME:PATH, or NAME:random "
          "(weights seeded by the name: the same model in every process)")
    print(f"losses: {', '.join(list_losses())}")
    print(f"augments: {', '.join(list_augments())}")
    print(f"recipes: {', '.join(list_recipes())}")
    return 0
