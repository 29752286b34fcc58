"""``clipstudio bench``: seconds per optimizer step of generate's loop."""
from __future__ import annotations

import argparse
import time

from ..config import GenerateConfig
from ..errors import ClipstudioError
from .generate import add_generate_options, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="measure seconds per step of generate's loop")
    add_generate_options(parser)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Seconds per optimizer step for the given settings (first step excluded as warm-up)."""
    import torch

    from ..studio import Studio, validate_config

    if args.repeat < 1:
        raise ClipstudioError(f"--repeat must be at least 1, got {args.repeat}")
    if not 0 <= args.threads <= 1024:
        raise ClipstudioError(f"--threads must be between 0 (torch's default) and 1024, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    settings.setdefault("prompt", "a red circle on a blue background")
    config = validate_config(GenerateConfig.from_dict(settings))
    studio = Studio(config, trust_checkpoint=args.trust_checkpoint)
    studio.step()
    start = time.perf_counter()
    for _ in range(args.repeat):
        studio.step()
    per_step = (time.perf_counter() - start) / args.repeat
    print(f"generator={config.generator} clip={','.join(config.clip)} size={config.width}x{config.height} "
          f"cutn={config.cutn} threads={torch.get_num_threads()}: {per_step:.3f} s/step over {args.repeat} steps")
    return 0
