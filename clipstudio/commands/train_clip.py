"""``clipstudio train clip``: contrastive training of a shapes-world CLIP model, rendered batches on the fly.
Options and defaults come from :class:`clipstudio.worlds.shapes.train_clip.ClipTrainConfig`."""
from __future__ import annotations

import argparse
import json

from ._options import add_trainer_parser, apply_threads, typed_settings

HELPS = {
    "model": "an open_clip config a world registers: shapes-guide or shapes-eval",
    "steps": "total steps (fixes the learning-rate schedule)",
    "seed": "seed of the initial weights and of every batch",
    "out": "checkpoint path ('': MODEL.pt in the current folder)",
    "state": "resume-state path ('': OUT.state)",
    "resume": "continue from the state file",
    "eval_every": "zero-shot check every N steps (0: off)",
    "stop_after": "stop with a checkpoint at this step; continue later with --resume (0: run all steps)",
    "init": "start from this checkpoint's weights (fine-tuning)",
    "extra_objects": "add hard-negative twins with one object more or fewer",
    "warmup": "warm-up steps (-1: steps/20, at most 200)",
}


def register(sub: argparse._SubParsersAction) -> None:
    from ..worlds.shapes.train_clip import ClipTrainConfig

    add_trainer_parser(sub, "clip", ClipTrainConfig, help="train a shapes-world CLIP model (shapes-guide, shapes-eval)",
                       description=__doc__.splitlines()[0], helps=HELPS, run=run)


def run(args: argparse.Namespace) -> int:
    """Train, then print the run's summary (without the loss history) as one JSON line."""
    from ..worlds.shapes.train_clip import ClipTrainConfig, train

    config = ClipTrainConfig(**typed_settings(args, ClipTrainConfig)).validate()
    apply_threads(args.threads)
    summary = train(config, progress=not args.quiet)
    summary.pop("history")
    print(json.dumps(summary))
    return 0
