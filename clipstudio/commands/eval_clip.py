"""``clipstudio eval clip`` (its parser still lives with its code; being moved here)."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "clip", "see 'eval clip --help'", {None: "clipstudio.worlds.shapes.zeroshot:main"})
