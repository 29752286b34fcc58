"""``clipstudio eval generate`` (its parser still lives with its code; being moved here)."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "generate", "see 'eval generate --help'", {None: "clipstudio.worlds.shapes.adherence:main"})
