"""``clipstudio eval generate``: how often CLIP-guided generation draws what the prompt says, judged by the
shapes world's colour-and-geometry checker over seeded canonical-grammar prompts, with the independent
evaluator CLIP's score and the time per image."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._options import add_dataclass_options, add_threads_option, apply_threads

DEFAULT_RECIPE = "shapes"
# GenerateConfig settings that get options of their own here (the rest through --set): what the issue's
# measurements name, and the knobs a sweep of guidance tricks turns most.
DIRECT_SETTINGS = ("clip", "generator", "layout", "search", "steps", "lr", "cutn", "cut_noise")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="pass rate of generate's settings on the shapes world's prompts",
                            description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="number of prompts, cycling through the grammar forms")
    parser.add_argument("--prompt-seed", type=int, default=1234, help="seed of the prompt set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="generation seeds for every prompt")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"recipe name or YAML file (default: {DEFAULT_RECIPE})")
    add_generate_options(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a GenerateConfig setting on top of the recipe, e.g. --set steps=50 "
                             "--set 'augments=[\"affine\"]'")
    parser.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                        help="evaluate once per value of one setting, e.g. --sweep steps=10,20,40")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="with --sweep: plot pass rate and evaluator score against the swept setting here")
    parser.add_argument("--save-dir", default=None, help="save every image here, named by outcome")
    parser.add_argument("--json", action="store_true", help="print the rows and summary as JSON")
    add_threads_option(parser)
    parser.set_defaults(run=run)


def add_generate_options(parser: argparse.ArgumentParser) -> None:
    """``--generator NAME --layout NAME --search N`` and the other :data:`DIRECT_SETTINGS`, derived from
    :class:`GenerateConfig` (only what is typed overrides the recipe)."""
    import dataclasses

    from ..config import GenerateConfig

    skip = tuple(f.name for f in dataclasses.fields(GenerateConfig) if f.name not in DIRECT_SETTINGS)
    add_dataclass_options(parser, GenerateConfig, skip=skip, helps={
        "clip": "guide CLIP model (repeat for an ensemble)",
        "generator": "generator (the recipe's 'generators:' section for it applies)",
        "layout": "a generator whose searched result starts this one ('none': start from noise)",
        "search": "coordinate-search sweeps before the steps (0: none)",
        "steps": "optimization steps", "lr": "learning rate", "cutn": "cutouts per step",
        "cut_noise": "largest noise added to a cutout",
    })
    for action in parser._actions:  # the defaults that apply are the recipe's, not GenerateConfig's neutral ones
        if action.dest in DIRECT_SETTINGS and action.help:
            action.help = action.help.rsplit(" (default:", 1)[0] + " (default: the recipe's)"


def generate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings typed as options, then ``--set``'s on top."""
    given = vars(args)
    return {**{k: given[k] for k in DIRECT_SETTINGS if k in given}, **parse_settings(args.set)}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_setting(text: str, option: str = "--set", form: str = "KEY=VALUE") -> tuple[str, str]:
    """``KEY=VALUE`` split in two; anything else is a one-line error."""
    from ..errors import ClipstudioError

    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value:
        raise ClipstudioError(f"{option} expects {form}, got '{text}'")
    return key.strip(), value


def parse_settings(items: list[str]) -> dict[str, Any]:
    """The ``--set`` options as settings (values read as JSON where they parse, else as text)."""
    return {key: _json_or_text(value) for key, value in map(parse_setting, items)}


def parse_sweep(text: str | None) -> tuple[str, list[Any]] | None:
    """``--sweep KEY=V1,V2,...`` as (key, values)."""
    from ..errors import ClipstudioError

    if text is None:
        return None
    key, values = parse_setting(text, "--sweep", "KEY=V1,V2,...")
    parts = values.split(",")
    if not all(p.strip() for p in parts):
        raise ClipstudioError(f"--sweep expects KEY=V1,V2,..., got '{text}'")
    return key, [_json_or_text(p.strip()) for p in parts]


def _print_report(report, as_json: bool, label: str = "") -> None:
    summary = report.summary()
    if as_json:
        print(json.dumps({**({"label": label} if label else {}), "summary": summary, "rows": report.rows}, indent=1))
        return
    for row in report.rows:
        mark = "pass" if row["passed"] else "FAIL " + "; ".join(row["failures"])
        print(f"{row['seconds']:6.1f}s  eval {row['evaluator']:.3f}  gap {row['gap']:+.3f}  {row['prompt']}  [{mark}]")
    print((f"{label}: " if label else "") + json.dumps(summary, indent=1))


def run(args: argparse.Namespace) -> int:
    """Generate every prompt and seed with the recipe (and settings), judge each image, print the summary."""
    from ..errors import ClipstudioError
    from ..recipes import recipe_config
    from ..studio import validate_config
    from ..images import check_writable
    from ..worlds.shapes.adherence import evaluate_generation, plot_sweep
    from ..worlds.shapes.prompts import prompt_set

    if args.n < 1 or not args.seeds:
        raise ClipstudioError(f"-n must be at least 1 and --seeds must name a seed, got -n {args.n}")
    options = generate_settings(args)
    sweep = parse_sweep(args.sweep)
    runs = [("", options)] if sweep is None else [(f"{sweep[0]}={v}", {**options, sweep[0]: v}) for v in sweep[1]]
    prompts = prompt_set(args.n, args.prompt_seed)
    for _, settings in runs:  # every setting is checked before the first image, not after an hour
        validate_config(recipe_config(args.recipe, prompts[0], **settings))
    if args.plot:
        if sweep is None:
            raise ClipstudioError("--plot needs --sweep KEY=V1,V2,...: it plots the figures against the swept setting")
        check_writable(args.plot)
    apply_threads(args.threads)
    summaries = []
    for label, settings in runs:
        save_dir = Path(args.save_dir) / label if args.save_dir and label else args.save_dir
        if save_dir:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
        report = evaluate_generation(prompts, args.seeds, str(save_dir) if save_dir else None, args.recipe, **settings)
        _print_report(report, args.json, label)
        summaries.append(report.summary())
    if args.plot:
        plot_sweep(sweep[0], sweep[1], summaries, args.plot, title=f"{args.n} prompts, prompt seed {args.prompt_seed}")
    return 0
