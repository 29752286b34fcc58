"""``clipstudio train clip`` (its parser still lives with its code; being moved here)."""
from ._legacy import register_delegated


def register(sub):
    register_delegated(sub, "clip", "see 'train clip --help'", {None: "clipstudio.train.clip_train:main"})
