"""The ``clipstudio`` command. Bad input ends in one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .errors import ClipstudioError

EXIT_USAGE = 2

# Subcommands that belong to optional parts of the package: "command [sub]" -> "module:function(argv)".
DELEGATED = {
    ("train", "clip"): "clipstudio.train.clip_train:main",
    ("train", "diffusion"): "clipstudio.train.diffusion_train:main",
    ("eval", "clip"): "clipstudio.world.zeroshot:main",
    ("eval", "generate"): "clipstudio.world.adherence:main",
    ("eval", "diffusion"): "clipstudio.diffusion.shapes_model:eval_main",
    ("demo", "spiral"): "clipstudio.diffusion.spiral:main",
    ("diffuse", None): "clipstudio.diffusion.backend:main",
    ("compare", None): "clipstudio.diffusion.compare:main",
}


def _scalar(text: str) -> Any:
    """``--gen-opt`` values: ints, floats and booleans become themselves, the rest stays text."""
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, _scalar(value)


def _add_generate_options(parser: argparse.ArgumentParser) -> None:
    # Defaults are SUPPRESS so that only the options a user typed override a recipe or a --from image.
    S = argparse.SUPPRESS
    parser.add_argument("prompt", nargs="?", default=S, help="text[:weight[:stop]], several joined by '|'")
    parser.add_argument("-o", "--output", default="out.png", help="output PNG (written atomically)")
    parser.add_argument("--from", dest="from_png", default=None, help="rerun the settings stored in a PNG")
    parser.add_argument("--recipe", default=None, help="a shipped recipe name or a YAML file of settings")
    parser.add_argument("--seed", type=int, default=S)
    parser.add_argument("--steps", type=int, default=S)
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=S)
    parser.add_argument("--generator", default=S, help="see 'clipstudio models'")
    parser.add_argument("--gen-opt", type=_key_value, action="append", default=S, metavar="KEY=VALUE",
                        help="a generator option, e.g. parametrization=rgb or vae=taef2")
    parser.add_argument("--trust-checkpoint", action="store_true", default=S,
                        help="allow unpickling a checkpoint that cannot be loaded safely (only for files you trust)")
    parser.add_argument("--clip", action="append", default=S,
                        help="CLIP model NAME[:PRETRAINED|:random|:PATH]; repeat to ensemble")
    parser.add_argument("--negative", action="append", default=S, help="a negative prompt; repeatable")
    parser.add_argument("--image-prompt", action="append", default=S, metavar="PATH[:WEIGHT]")
    parser.add_argument("--init-image", default=S)
    parser.add_argument("--layout", default=S, help="start from this generator's result: auto (primitives for "
                        "the embedded shapes-world guides), none, or a generator name")
    parser.add_argument("--cutn", type=int, default=S)
    parser.add_argument("--cut-pow", type=float, default=S)
    parser.add_argument("--cut-min", type=float, default=S, help="smallest cutout, as a fraction of the side")
    parser.add_argument("--augment", action="append", default=S, help="kornia augmentation by name; repeatable")
    parser.add_argument("--lr", type=float, default=S)
    parser.add_argument("--optimizer", choices=["adam", "adamw"], default=S)
    parser.add_argument("--schedule", choices=["constant", "cosine", "linear"], default=S)
    parser.add_argument("--tv", type=float, default=S, help="total-variation weight")
    parser.add_argument("--anchor", type=float, default=S, help="MSE-to-init-image weight")
    parser.add_argument("--perceptual", type=float, default=S, help="LPIPS-to-init-image weight")
    parser.add_argument("--weights-dir", default=S, help="folder of model files for offline use")
    parser.add_argument("--device", default=S)
    parser.add_argument("--save-every", type=int, default=0, help="also save a frame every N steps")
    parser.add_argument("--checkpoint", default=None,
                        help="save the run state here every --checkpoint-every steps; resume from it if it exists")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--search", type=int, default=S, metavar="SWEEPS",
                        help="sweeps of search over the generator's discrete choices before the first step "
                        "(0: off; default 3 with the embedded shapes-world guides, else 0)")
    parser.add_argument("--search-restarts", type=int, default=S,
                        help="searches from random starting choices; the best is kept")
    parser.add_argument("--candidates", type=int, default=S,
                        help="CLIP ranking: generate N candidates (seeds seed..seed+N-1) and keep the best")
    parser.add_argument("--keep", type=int, default=1, help="how many ranked candidates to write (OUT-1.png, ...)")
    parser.add_argument("--rank-clip", default=None, help="CLIP model that ranks candidates (default: the first --clip)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# argparse destination -> GenerateConfig field, where the names differ.
_FIELD_NAMES = {"negative": "negative", "image_prompt": "image_prompts", "augment": "augments"}
_NOT_SETTINGS = {"command", "output", "from_png", "recipe", "save_every", "quiet", "gen_opt", "trust_checkpoint",
                 "repeat", "threads", "checkpoint", "checkpoint_every", "keep", "rank_clip",
                 "size", "func"}


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a user asked for: a --from PNG's, then a recipe's, then each option typed."""
    from .images import read_png_settings
    from .recipes import load_recipe

    settings: dict[str, Any] = {}
    if args.from_png:
        settings.update(read_png_settings(args.from_png).get("settings", {}))
    if args.recipe:
        settings.update(load_recipe(args.recipe))
    given = vars(args)
    for dest, value in given.items():
        if dest not in _NOT_SETTINGS:
            settings[_FIELD_NAMES.get(dest, dest)] = value
    if "size" in given:
        settings["width"], settings["height"] = given["size"]
    options = dict(settings.get("generator_options", {}))
    options.update(dict(given.get("gen_opt", [])))
    if given.get("trust_checkpoint"):
        options["trust_checkpoint"] = True
    if options:
        settings["generator_options"] = options
    return settings


def cmd_generate(args: argparse.Namespace) -> int:
    from .config import GenerateConfig
    from .images import check_writable
    from .studio import Studio

    config = GenerateConfig.from_dict(settings_from_args(args)).validate()
    output = check_writable(args.output)  # fail before the work, not after
    if config.candidates > 1:
        if args.checkpoint or args.save_every:
            raise ClipstudioError("--checkpoint and --save-every follow one run: add --candidates 1")
        return _generate_ranked(args, config, output)
    frames_dir = None
    if args.save_every:
        frames_dir = output.with_name(output.stem + "_frames")
        frames_dir.mkdir(exist_ok=True)
    studio = Studio(config)
    if args.checkpoint and studio.resume(args.checkpoint):
        print(f"resumed from {args.checkpoint} at step {studio.step_index}")
    result = studio.run(progress=not args.quiet, frames_dir=frames_dir, save_every=args.save_every,
                        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    result.save(output)
    skipped = f", {result.skipped_steps} skipped (non-finite)" if result.skipped_steps else ""
    print(f"wrote {output} ({result.steps_run} steps in {result.seconds:.1f} s, "
          f"{result.seconds_per_step:.3f} s/step{skipped}; loss {result.losses['total']:.4f})")
    return 0


def _ranked_path(output: Path, rank: int, keep: int) -> Path:
    return output if keep == 1 else output.with_name(f"{output.stem}-{rank}{output.suffix}")


def _generate_ranked(args: argparse.Namespace, config, output: Path) -> int:
    from .ranking import generate_ranked

    options = config.to_full_dict()
    prompt = options.pop("prompt")
    ranked = generate_ranked(prompt, args.keep, args.rank_clip, **options)
    for rank, (score, result) in enumerate(ranked, start=1):
        path = result.save(_ranked_path(output, rank, args.keep))
        print(f"wrote {path} (seed {result.settings.seed}, CLIP score {score:.4f}, rank {rank}/{config.candidates})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Seconds per optimizer step for the given settings (first step excluded as warm-up)."""
    import torch

    from .config import GenerateConfig
    from .studio import Studio

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    settings.setdefault("prompt", "a red circle on a blue background")
    config = GenerateConfig.from_dict(settings).validate()
    studio = Studio(config)
    studio.step()
    start = time.perf_counter()
    for _ in range(args.repeat):
        studio.step()
    per_step = (time.perf_counter() - start) / args.repeat
    print(f"generator={config.generator} clip={','.join(config.clip)} size={config.width}x{config.height} "
          f"cutn={config.cutn} threads={torch.get_num_threads()}: {per_step:.3f} s/step over {args.repeat} steps")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .generators import GENERATORS
    from .guide.clip import EMBEDDED_MODELS, embedded_checkpoint
    from .guide.cutouts import list_augments
    from .losses import list_losses
    from .recipes import list_recipes

    print("generators:")
    for name, entry in sorted(GENERATORS.items()):
        extra = f" [needs clipstudio[{entry.extra}]]" if entry.extra else ""
        print(f"  {name:10s} {entry.summary}{extra}")
    print("embedded CLIP models:")
    for name in EMBEDDED_MODELS:
        try:
            state = f"{embedded_checkpoint(name).stat().st_size / 1e6:.1f} MB"
        except ClipstudioError:
            state = "missing"
        print(f"  {name:14s} {state}")
    print("open_clip models: any NAME[:PRETRAINED] from open_clip (e.g. ViT-B-32:openai), NAME:random, or NAME:PATH")
    print(f"losses: {', '.join(list_losses())}")
    print(f"augments: {', '.join(list_augments())}")
    print(f"recipes: {', '.join(list_recipes())}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """List the weights registry, or fetch files by name into the cache (or check a --weights-dir)."""
    from . import weights

    if not args.names:
        for entry in weights.list_weights():
            sha = entry.sha256[:12] if entry.sha256 else "unverified"
            print(f"{entry.name:34s} {entry.filename:32s} sha256 {sha:12s} {entry.license}")
        print(f"cache: {weights.cache_dir()}  offline folder: CLIPSTUDIO_WEIGHTS or --weights-dir")
        return 0
    for name in args.names:
        print(f"{name}: {weights.fetch(name, weights_dir=args.weights_dir)}")
    return 0


def cmd_delegated(args: argparse.Namespace, rest: list[str]) -> int:
    key = (args.command, getattr(args, "what", None))
    module_name, func_name = DELEGATED[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("clipstudio"):
            raise ClipstudioError(f"'{' '.join(k for k in key if k)}' is not available in this install") from None
        from .errors import missing_extra

        raise missing_extra(err.name or "?", "diffusion", f"'{' '.join(k for k in key if k)}'") from None
    return int(getattr(module, func_name)(rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipstudio", description="CLIP-guided image generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="optimize an image toward a prompt with CLIP guidance")
    _add_generate_options(gen)
    bench = sub.add_parser("bench", help="measure seconds per step of generate's loop")
    _add_generate_options(bench)
    bench.add_argument("--repeat", type=int, default=5)
    bench.add_argument("--threads", type=int, default=0)
    sub.add_parser("models", help="list generators, CLIP models, losses, augments and recipes")
    wts = sub.add_parser("weights", help="list known model files, or fetch some by name")
    wts.add_argument("names", nargs="*", help="weights names (see the list), e.g. taef2_decoder")
    wts.add_argument("--weights-dir", default=None)
    for command, whats in (("train", ["clip", "diffusion"]), ("eval", ["clip", "generate", "diffusion"]), ("demo", ["spiral"])):
        # No -h here: "train clip --help" must reach the delegated command's own parser.
        p = sub.add_parser(command, help=f"{command} ({', '.join(whats)}); see '{command} WHAT --help'",
                           add_help=False)
        p.add_argument("what", choices=whats)
    sub.add_parser("diffuse", help="sample the CFG diffusion backend (see 'diffuse --help')", add_help=False)
    sub.add_parser("compare", help="compare CLIP guidance and CFG diffusion on prompts", add_help=False)
    return parser


def _one_line_warnings() -> None:
    warnings.formatwarning = lambda message, category, *a, **k: f"clipstudio: warning: {message}\n"
    # Deprecation chatter from dependencies (lpips calls torchvision the old way) is not the user's business.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _one_line_warnings()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    handlers = {"generate": cmd_generate, "bench": cmd_bench, "models": cmd_models, "weights": cmd_weights}
    try:
        if args.command in handlers:
            if rest:
                parser.error(f"unrecognized arguments: {' '.join(rest)}")
            return handlers[args.command](args)
        return cmd_delegated(args, rest)
    except ClipstudioError as err:
        print(f"clipstudio: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clipstudio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
