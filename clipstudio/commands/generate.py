"""``clipstudio generate``: optimize an image toward a prompt with CLIP guidance."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import CUT_MODES, OPTIMIZERS, SCHEDULES, GenerateConfig
from ..errors import ClipstudioError
from ._options import S, add_dataclass_options, key_value, typed_settings

# What `generate PROMPT` runs when the user names no recipe, no --from image and no CLIP model: the shapes
# world's default, which works offline on a CPU with the embedded models.
DEFAULT_RECIPE = "shapes"

HELPS = {
    "negative": "a negative prompt; repeatable",
    "image_prompts": "an image prompt PATH[:WEIGHT]; repeatable",
    "clip": "CLIP model NAME[:PRETRAINED|:random|:PATH]; repeat to ensemble",
    "generator": "see 'clipstudio models'",
    "cut_min": "smallest cutout, as a fraction of the side",
    "augments": "kornia augmentation by name; repeatable",
    "layout": "start from this generator's searched result (coarse to fine), or none",
    "search": "sweeps of search over the generator's discrete choices before the first step (0: off)",
    "search_restarts": "searches from random starting choices; the best is kept",
    "search_cutn": "cutouts that judge the search's options (0: as --cutn)",
    "candidates": "CLIP ranking: generate N candidates (seeds seed..seed+N-1) and keep the best",
    "weights_dir": "folder of model files for offline use",
    "device": "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps",
    "dtype": "float32, or bfloat16/float16 to run the CLIP forward under autocast where the device supports it",
    "cut_mode": "crops: random square crops; pooled: the whole image, avg+max pooled (the classic cutouts)",
    "channels_last": "channels_last memory for convolutional models (same numbers; faster on CPU)",
    "grad_norm": "scale each latent's gradient to unit L2 norm before the optimizer step",
    "ema": "decay of an EMA of the latents that renders the output (0: off)",
    "latent_l2": "weight of an L2 pull of the latents toward zero (the init's, with --init-image)",
    "latent_l2_schedule": "how the latent L2 weight decays to 0 over the steps",
    "fast_augments": "apply the augmentations without kornia's per-call machinery (same cutouts; faster)",
    "batched_draw": "draw all cutouts' augmentation parameters in one vectorized call (kornia's distributions, "
                    "another random stream; faster)",
    "fused_optimizer": "PyTorch's fused Adam kernel on CPU and CUDA (the same update to float32 rounding; faster)",
}
FLAGS = {"image_prompts": "image-prompt", "augments": "augment"}
SHORTHAND_LOSSES = {"tv": "total-variation weight", "anchor": "MSE-to-init-image weight",
                    "perceptual": "LPIPS-to-init-image weight"}


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """The options of a guided run (shared by generate and bench)."""
    parser.add_argument("prompt", nargs="?", default=S, help="text[:weight[:stop]], several joined by '|'")
    parser.add_argument("--from", dest="from_png", default=None, help="rerun the settings stored in a PNG")
    parser.add_argument("--recipe", default=None,
                        help=f"a recipe name or YAML file (default: '{DEFAULT_RECIPE}' unless --clip is given)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=S)
    add_dataclass_options(parser, GenerateConfig, helps=HELPS, flags=FLAGS, skip=("prompt", "width", "height"),
                          choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                                   "cut_mode": CUT_MODES, "latent_l2_schedule": SCHEDULES})
    parser.add_argument("--gen-opt", type=key_value, action="append", default=S, metavar="KEY=VALUE",
                        help="a generator option, e.g. parametrization=rgb or vae=taef2")
    parser.add_argument("--layout-opt", type=key_value, action="append", default=S, metavar="KEY=VALUE",
                        help="an option of the layout generator")
    parser.add_argument("--loss", type=key_value, action="append", default=S, metavar="NAME=WEIGHT",
                        help="weight a regularizer (see 'clipstudio models')")
    for name, text in SHORTHAND_LOSSES.items():
        parser.add_argument(f"--{name}", type=float, default=S, help=f"{text} (same as --loss {name}=W)")
    parser.add_argument("--loss-opt", type=loss_option, action="append", default=S, metavar="NAME.KEY=VALUE",
                        help="an option of a loss, e.g. sds.model=shapes-diffusion or sds.guidance=3")
    parser.add_argument("--perceptual-net", default=S, help="LPIPS backbone: alex, vgg or squeeze")
    parser.add_argument("--trust-checkpoint", action="store_true", default=False,
                        help="allow a full unpickle of a checkpoint that cannot be loaded safely, for this run only "
                             "(never recorded in the output; only for files you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a user asked for: a --from PNG's or a recipe's, then each option typed."""
    from ..images import read_png_run_settings
    from ..recipes import recipe_settings

    given = vars(args)
    typed = typed_settings(args, GenerateConfig)
    if "prompt" in given:
        typed["prompt"] = given["prompt"]
    if "size" in given:
        typed["width"], typed["height"] = given["size"]
    settings: dict[str, Any] = {}
    if args.from_png:
        settings.update(read_png_run_settings(args.from_png))
    recipe = args.recipe or (None if args.from_png or "clip" in typed else DEFAULT_RECIPE)
    if recipe:
        settings.update(recipe_settings(recipe, {**settings, **typed}))
    settings.update(typed)
    _merge_mapping_options(settings, given)
    return settings


def _merge_mapping_options(settings: dict[str, Any], given: dict[str, Any]) -> None:
    """``--gen-opt``, ``--layout-opt``, ``--loss`` and the loss shorthands into their mapping settings."""
    for key in ("generator_options", "layout_options", "losses", "loss_options"):
        if not isinstance(settings.get(key, {}), dict):  # from a --from image or a recipe
            raise ClipstudioError(f"setting {key} must be a mapping, got {type(settings[key]).__name__}")
    for key, option in (("generator_options", "gen_opt"), ("layout_options", "layout_opt")):
        if option in given:
            settings[key] = {**settings.get(key, {}), **dict(given[option])}
    losses = dict(settings.get("losses", {}))
    losses.update(dict(given.get("loss", [])))
    losses.update({name: given[name] for name in SHORTHAND_LOSSES if name in given})
    if losses:
        settings["losses"] = losses
    typed_options = [(("perceptual", "net"), given["perceptual_net"])] if "perceptual_net" in given else []
    typed_options += list(given.get("loss_opt", []))
    if typed_options:
        options = {name: dict(values) if isinstance(values, dict) else values
                   for name, values in settings.get("loss_options", {}).items()}
        for (name, key), value in typed_options:
            options.setdefault(name, {})[key] = value
        settings["loss_options"] = options


def loss_option(text: str) -> tuple[tuple[str, str], Any]:
    """An argparse type for ``--loss-opt NAME.KEY=VALUE``: ((name, key), value)."""
    key, value = key_value(text)
    name, dot, option = key.partition(".")
    if not dot or not name or not option:
        raise argparse.ArgumentTypeError(f"expected NAME.KEY=VALUE (e.g. sds.guidance=3), got '{text}'")
    return (name, option), value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="optimize an image toward a prompt with CLIP guidance")
    add_generate_options(parser)
    parser.add_argument("-o", "--output", default="out.png", help="output PNG (written atomically)")
    parser.add_argument("--save-every", type=int, default=0, help="also save a frame every N steps")
    parser.add_argument("--checkpoint", default=None,
                        help="save the run state here every --checkpoint-every steps; resume from it if it exists")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--keep", type=int, default=1, help="how many ranked candidates to write (OUT-1.png, ...)")
    parser.add_argument("--rank-clip", default=None, help="CLIP model that ranks candidates (default: the first --clip)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..images import check_writable
    from ..studio import Studio, validate_config

    config = validate_config(GenerateConfig.from_dict(settings_from_args(args)))
    _check_run_options(args, config)
    output = check_writable(args.output)  # fail before the work, not after
    if args.checkpoint:
        check_writable(args.checkpoint)
    if config.candidates > 1:
        if args.checkpoint or args.save_every:
            raise ClipstudioError("--checkpoint and --save-every follow one run: add --candidates 1")
        return _generate_ranked(args, config, output)
    frames_dir = None
    if args.save_every:
        frames_dir = output.with_name(output.stem + "_frames")
        try:
            frames_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise ClipstudioError(f"cannot make the frames folder {frames_dir}: {err.strerror or err}") from None
    studio = Studio(config, trust_checkpoint=args.trust_checkpoint)
    if args.checkpoint and studio.resume(args.checkpoint):
        print(f"resumed from {args.checkpoint} at step {studio.step_index}")
    result = studio.run(progress=not args.quiet, frames_dir=frames_dir, save_every=args.save_every,
                        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    result.save(output)
    skipped = f", {result.skipped_steps} skipped (non-finite)" if result.skipped_steps else ""
    print(f"wrote {output} ({result.steps_run} steps in {result.seconds:.1f} s, "
          f"{result.seconds_per_step:.3f} s/step{skipped}; loss {result.losses['total']:.4f})")
    return 0


def _check_run_options(args: argparse.Namespace, config: GenerateConfig) -> None:
    """The options of this command that are not settings, checked before any work."""
    if args.save_every < 0:
        raise ClipstudioError(f"--save-every must be 0 (off) or more, got {args.save_every}")
    if args.checkpoint_every < 1:
        raise ClipstudioError(f"--checkpoint-every must be at least 1, got {args.checkpoint_every}")
    if not 1 <= args.keep <= config.candidates:
        raise ClipstudioError(f"--keep must be between 1 and --candidates ({config.candidates}), got {args.keep}")


def _ranked_path(output: Path, rank: int, keep: int) -> Path:
    return output if keep == 1 else output.with_name(f"{output.stem}-{rank}{output.suffix}")


def _generate_ranked(args: argparse.Namespace, config: GenerateConfig, output: Path) -> int:
    from ..ranking import generate_ranked

    ranked = generate_ranked(config, args.keep, args.rank_clip)
    for rank, (score, result) in enumerate(ranked, start=1):
        path = result.save(_ranked_path(output, rank, args.keep))
        print(f"wrote {path} (seed {result.settings.seed}, CLIP score {score:.4f}, rank {rank}/{config.candidates})")
    return 0
