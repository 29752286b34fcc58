"""``clipstudio eval diffusion`` (its parser still lives with its code; being moved here)."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "diffusion", "see 'eval diffusion --help'", {None: "clipstudio.worlds.shapes.diffusion_model:eval_main"})
