"""``clipstudio compare``: CLIP guidance and CFG diffusion on the same prompts."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "compare", "compare CLIP guidance and CFG diffusion on prompts",
                       {None: "clipstudio.worlds.shapes.compare:main"})
