"""``clipstudio train robust``: adversarial fine-tuning of a CLIP image tower (FARE or TeCoA under a PGD attack,
L-inf or L2) on shapes-world renders. Options and defaults come from
:class:`clipstudio.worlds.shapes.train_robust.RobustTrainConfig`."""
from __future__ import annotations

import argparse
import json

from ._options import add_trainer_parser, apply_threads, command_line, typed_settings

HELPS = {
    "model": "the CLIP to make robust: an embedded name (shapes-guide), NAME:PATH or a checkpoint path",
    "objective": "fare: keep the clean embedding under attack (Schlarmann et al. 2024); "
                 "tecoa: contrastive loss under attack (Mao et al. 2023)",
    "norm": "threat model of the PGD attack",
    "eps": "attack radius, in units of 1/255, at the model's input size",
    "step_size": "PGD step, in units of 1/255",
    "pgd_steps": "PGD iterations per training step",
    "clean_weight": "weight of the objective on the clean images too",
    "seed": "seed of every batch and attack start",
    "out": "checkpoint path ('': MODEL-OBJECTIVE.pt); a card OUT.json goes beside it",
    "state": "resume-state path ('': OUT.state)",
    "resume": "continue from the state file (exactly)",
    "stop_after": "stop with a checkpoint at this step; continue later with --resume (0: run all steps)",
    "eval_n": "clean zero-shot check at the end, scenes per form (0: off)",
    "extra_objects": "hard-negative twins with one object more or fewer (TeCoA's captions)",
    "warmup": "warm-up steps (-1: steps/20, at most 50)",
}


def register(sub: argparse._SubParsersAction) -> None:
    from ..guide.robust import NORMS, OBJECTIVES
    from ..worlds.shapes.train_robust import RobustTrainConfig

    add_trainer_parser(sub, "robust", RobustTrainConfig, help="adversarially fine-tune a CLIP image tower (FARE, TeCoA)",
                       description=__doc__.splitlines()[0], helps=HELPS, run=run,
                       choices={"objective": OBJECTIVES, "norm": NORMS})


def run(args: argparse.Namespace) -> int:
    """Fine-tune, then print the run's summary (without the loss history) as one JSON line."""
    from ..worlds.shapes.train_robust import RobustTrainConfig, train

    settings = typed_settings(args, RobustTrainConfig)
    config = RobustTrainConfig(**settings).validate()
    apply_threads(args.threads)
    command = command_line("train robust", settings)
    summary = train(config, command=command, progress=not args.quiet)
    summary.pop("history")
    print(json.dumps(summary))
    return 0
