"""``clipstudio demo spiral`` (its parser still lives with its code; being moved here)."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "spiral", "see 'demo spiral --help'", {None: "clipstudio.demos.spiral:main"})
