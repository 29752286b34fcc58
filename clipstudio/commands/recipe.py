"""``clipstudio recipe list | show NAME | run NAME_OR_PATH [key=value ...] | dump -o FILE [generate options]``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ClipstudioError


def weights_needed(settings: dict[str, Any]) -> list[str]:
    """What a recipe's run loads from model files that are not shipped with the package (downloaded on first
    use, or put in the weights folder for offline use)."""
    from .. import embedded

    needs = []
    for clip in settings.get("clip", ["ViT-B-32:openai"]):
        if clip not in embedded.embedded_models("clip") and not clip.endswith(":random"):
            needs.append(f"CLIP '{clip}'")
    for generator, options in ((settings.get("generator", "pixels"), settings.get("generator_options", {})),
                               (settings.get("layout", "none"), settings.get("layout_options", {}))):
        if generator == "vqgan":
            needs.append(f"VQGAN '{options.get('checkpoint') or options.get('model', 'vqgan_imagenet_f16_16384')}'")
        elif generator == "latent" and options.get("vae", "taef2") != "tiny-random":
            needs.append(f"autoencoder '{options.get('vae', 'taef2')}'")
    return needs


def _list() -> int:
    from ..recipes import list_recipes, recipe_description

    width = max(len(name) for name in list_recipes())
    for name in list_recipes():
        print(f"{name:{width}s}  {recipe_description(name)}")
    return 0


def _show(name: str) -> int:
    from ..recipes import is_animation, recipe_path, recipe_settings

    path = recipe_path(name)
    needs = weights_needed(recipe_settings(name))
    print(f"recipe: {name} ({path})")
    print(f"kind: {'animation (clipstudio animate, or recipe run)' if is_animation(name) else 'still image'}")
    if needs:
        print(f"needs weights: {', '.join(needs)} (downloaded on first use; offline, see 'clipstudio weights')")
    else:
        print("needs weights: none (runs offline with the package's own models)")
    print("---")
    print(path.read_text().rstrip())
    return 0


def _run(args: argparse.Namespace) -> int:
    from ..recipes import is_animation, recipe_path
    from .animate import animate_recipe, recipe_run_config, split_overrides

    stem = recipe_path(args.recipe).stem
    animated = is_animation(args.recipe) or bool(split_overrides(args.overrides)[1])
    if animated:
        return animate_recipe(args.recipe, args.overrides, args.output or f"{stem}.mp4", None, args.checkpoint,
                              args.quiet)
    from ..images import check_writable
    from ..studio import Studio

    config, _ = recipe_run_config(args.recipe, args.overrides)
    output = check_writable(args.output or f"{stem}.png")
    studio = Studio(config)
    if args.checkpoint and studio.resume(args.checkpoint):
        print(f"resumed from {args.checkpoint} at step {studio.step_index}")
    result = studio.run(progress=not args.quiet, checkpoint=args.checkpoint)
    result.save(output)
    print(f"wrote {output} ({result.steps_run} steps in {result.seconds:.1f} s; loss {result.losses['total']:.4f})")
    return 0


def _dump(args: argparse.Namespace) -> int:
    from ..config import GenerateConfig
    from ..images import atomic_write
    from ..recipes import dump_recipe, is_animation, recipe_animation
    from ..studio import validate_config
    from .generate import settings_from_args

    settings = settings_from_args(args)
    config = GenerateConfig.from_dict(settings)
    if config.prompt.strip() or config.image_prompts:
        validate_config(config)
    animation = recipe_animation(args.recipe) if args.recipe and is_animation(args.recipe) else None
    text = dump_recipe(config, animation)
    atomic_write(args.output, lambda handle: handle.write(text.encode()))
    print(f"wrote {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .generate import add_generate_options

    parser = sub.add_parser("recipe", help="list, show, run and write recipes")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="one recipe a line: its name, then what it does")
    show = actions.add_parser("show", help="a recipe's file, kind, and the weights it needs")
    show.add_argument("recipe")
    run_parser = actions.add_parser("run", help="run a recipe (an animation recipe writes a video)")
    run_parser.add_argument("recipe", help="a recipe name or YAML file")
    run_parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings on top of the recipe")
    run_parser.add_argument("-o", "--output", default=None, help="default: NAME.png, or NAME.mp4 for an animation")
    run_parser.add_argument("--checkpoint", default=None, help="save the run state here; resume from it if it exists")
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    dump = actions.add_parser("dump", help="write the settings of generate options as a recipe (differences only)")
    add_generate_options(dump)
    dump.add_argument("-o", "--output", required=True, help="the recipe YAML to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list()
    if args.action == "show":
        return _show(args.recipe)
    if args.action == "run":
        return _run(args)
    if args.action == "dump":
        if Path(args.output).suffix not in (".yaml", ".yml"):
            raise ClipstudioError(f"a recipe file ends in .yaml, got {args.output}")
        return _dump(args)
    raise ClipstudioError(f"unknown recipe action '{args.action}'")
