"""``clipstudio diffuse``: sample the CFG diffusion backend."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "diffuse", "sample the CFG diffusion backend (see 'diffuse --help')",
                       {None: "clipstudio.diffusion.backend:main"})
