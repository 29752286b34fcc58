"""``clipstudio train decoder``: fine-tune a latent diffusion checkpoint's TAEF2 decoder on the shapes world's
renders (the UNet and encoder frozen). Every option derives from
:class:`clipstudio.worlds.shapes.train_decoder.DecoderTrainConfig`, where its default lives."""
from __future__ import annotations

import argparse

from ._options import add_trainer_parser, apply_threads, command_line, typed_settings

HELPS = {
    "model": "the embedded latent diffusion model whose decoder to fine-tune",
    "checkpoint": "a latent diffusion checkpoint file instead of --model",
    "steps": "optimizer steps",
    "batch": "rendered scenes per step",
    "latent_noise": "the latents get Gaussian noise of a standard deviation drawn from U(0, this) "
                    "(the UNet's samples lie near the encoder's latents, not on them)",
    "ema_decay": "the shipped decoder is an average of the weights with this decay per step (0: the last weights)",
    "eval_scenes": "held-out scenes whose round trip (render, encode, decode, check) is reported before and after",
    "out": "the checkpoint with its decoder replaced (a .json card beside it)",
    "state": "full training state for --resume (None: OUT.state)",
    "resume": "continue from --state if it exists",
    "save_every": "write the state and the checkpoint every this many steps",
}


def register(sub: argparse._SubParsersAction) -> None:
    from ..worlds.shapes.train_decoder import DecoderTrainConfig

    add_trainer_parser(
        sub, "decoder", DecoderTrainConfig, help="fine-tune a latent diffusion model's decoder on the world's renders",
        description="Fit a latent diffusion checkpoint's TAEF2 decoder to the shapes world (L1 to the render of "
                    "noised encoder latents); only the decoder changes.",
        helps=HELPS, run=run)


def run(args: argparse.Namespace) -> int:
    from ..worlds.shapes.train_decoder import DecoderTrainConfig, train

    apply_threads(args.threads)
    settings = typed_settings(args, DecoderTrainConfig)
    config = DecoderTrainConfig(**settings).validate()
    summary = train(config, progress=not args.quiet, command=command_line("train decoder", settings))
    print(f"saved {config.out} at step {summary['step']} ({summary['train_seconds']:.0f} s)")
    return 0
