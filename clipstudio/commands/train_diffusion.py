"""``clipstudio train diffusion`` (its parser still lives with its code; being moved here)."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "diffusion", "see 'train diffusion --help'", {None: "clipstudio.train.diffusion_train:main"})
