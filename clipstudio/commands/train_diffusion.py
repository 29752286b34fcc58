"""``clipstudio train diffusion``: train (or resume) the shapes world's text-to-image diffusion model. Every
option derives from :class:`clipstudio.worlds.shapes.train_diffusion.DiffusionTrainConfig`, where its default lives."""
from __future__ import annotations

import argparse

from ._options import add_trainer_parser, apply_threads, command_line, typed_settings

HELPS = {
    "out": "the shippable checkpoint (a .json sidecar beside it records command, config and progress)",
    "state": "full training state for --resume (None: OUT.state)",
    "resume": "continue from --state if it exists",
    "p_uncond": "caption dropout rate (CFG)",
    "p_partial": "share of one-object captions that leave the colour free or name only it",
    "guide": "guide CLIP checkpoint whose text tower conditions the UNet (None: the shipped shapes-guide)",
    "max_minutes": "stop (and save) after this much training",
    "stop_after": "stop (and save) at this step; --resume later",
    "min_snr": "min-SNR-gamma loss weighting (Hang et al. 2023); None: the plain DDPM loss",
    "space": "taef2: 64 px images as 8x8x32 TAEF2 latents; pixel: 32 px pixels",
    "dataset": "scenes pre-encoded to TAEF2 latents",
    "latents": "cache of the encoded dataset (None: STATE.latents)",
    "weights_dir": "folder holding taef2_encoder.pth / taef2_decoder.pth",
    "default_guidance": "guidance weight stored as the model's default",
}


def register(sub: argparse._SubParsersAction) -> None:
    from ..worlds.shapes.train_diffusion import SPACES, TRAIN_OPTIONAL_TYPES, DiffusionTrainConfig

    add_trainer_parser(sub, "diffusion", DiffusionTrainConfig, help="train the shapes world's CFG diffusion model",
                       description="Train (or resume) the shapes world's text-to-image diffusion model.",
                       helps=HELPS, run=run, choices={"space": SPACES}, types=TRAIN_OPTIONAL_TYPES)


def run(args: argparse.Namespace) -> int:
    from ..worlds.shapes.train_diffusion import DiffusionTrainConfig, train

    apply_threads(args.threads)
    config = DiffusionTrainConfig(**typed_settings(args, DiffusionTrainConfig)).validate()
    summary = train(config, progress=not args.quiet, command=command_line("train diffusion", typed_settings(args, DiffusionTrainConfig)))
    print(f"saved {config.out} at step {summary['step']} ({summary['train_seconds']:.0f} s, "
          f"loss {summary['last_loss']:.4f})")
    return 0
