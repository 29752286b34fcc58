"""``clipstudio rank PROMPT -n N -k K -o DIR``: make N candidates (guided-generation seeds, or samples of an
embedded diffusion model) or take the images of a folder, score them with one or more CLIP models, and write
the best K ranked, with a contact sheet of their scores and a ``scores.json``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import ClipstudioError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_RECIPE = "shapes"
DEFAULT_DIFFUSION = "shapes-diffusion"


def generate_candidates(prompt: str, n: int, seed: int, recipe: str, pairs: list[str],
                        progress: bool = False) -> tuple[list[Image.Image], list[str], list[str]]:
    """N guided generations of a recipe, seeds ``seed .. seed+n-1``: (images, labels, the recipe's CLIPs)."""
    from ..studio import Studio
    from .animate import recipe_run_config

    config, _ = recipe_run_config(recipe, [f"prompt={prompt}", *pairs])
    images = []
    for index in range(n):
        images.append(Studio(config.replace(seed=seed + index, candidates=1)).run(progress=progress).image)
    return images, [f"seed {seed + i}" for i in range(n)], list(config.clip)


def diffuse_candidates(prompt: str, n: int, seed: int, model: str, guidance: float | None,
                       steps: int | None) -> tuple[list[Image.Image], list[str]]:
    """N samples of an embedded diffusion model for ``prompt`` (one seeded batch)."""
    from ..diffusion.backend import load_embedded_backend, to_pil

    backend = load_embedded_backend(model)
    images = backend.generate(prompt, n=n, seed=seed, guidance=guidance, steps=steps)
    return to_pil(images), [f"sample {i} (seed {seed})" for i in range(n)]


def folder_candidates(folder: str, n: int | None) -> tuple[list[Image.Image], list[str]]:
    """The images of a folder (sorted by name; the first ``n`` if given)."""
    path = Path(folder)
    if not path.is_dir():
        raise ClipstudioError(f"image folder not found: {folder}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    if not files:
        raise ClipstudioError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                images.append(img.convert("RGB"))
        except (OSError, ValueError) as err:
            raise ClipstudioError(f"cannot read image {file}: {err}") from None
    return images, [file.name for file in files]


def write_ranking(out_dir: Path, prompt: str, images: list[Image.Image], labels: list[str], keep: int,
                  scores: list[float], per_model: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The best ``keep`` images as ``rank-01.png``..., ``contact-sheet.png`` and ``scores.json``."""
    from ..images import atomic_write, save_png
    from ..ranking import contact_sheet

    order = sorted(range(len(images)), key=lambda i: -scores[i])[:keep]
    kept = []
    for rank, index in enumerate(order, start=1):
        entry = {"rank": rank, "file": f"rank-{rank:02d}.png", "source": labels[index], "score": scores[index],
                 "scores": {clip: values[index] for clip, values in per_model.items()}}
        save_png(images[index], out_dir / entry["file"], {"prompt": prompt, **entry})
        kept.append(entry)
    captions = [f"#{e['rank']} {e['score']:.3f}\n{e['source']}"[:40] for e in kept]
    contact = contact_sheet([images[i] for i in order], captions)
    save_png(contact, out_dir / "contact-sheet.png", {"prompt": prompt})
    report = {"prompt": prompt, "candidates": len(images), "clip": list(per_model), "kept": kept}
    atomic_write(out_dir / "scores.json", lambda h: h.write(json.dumps(report, indent=2).encode()))
    return kept


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("rank", help="make or take N images, keep the K a CLIP ensemble scores best")
    parser.add_argument("prompt", help="text[:weight], several joined by '|' (embedding arithmetic works too)")
    parser.add_argument("-n", "--candidates", type=int, default=8, help="how many candidates to make (default 8)")
    parser.add_argument("-k", "--keep", type=int, default=3, help="how many to keep (default 3)")
    parser.add_argument("-o", "--output", required=True, help="folder for the ranked images and contact sheet")
    parser.add_argument("--from-dir", default=None, help="rank the images of this folder instead of making them")
    parser.add_argument("--backend", choices=("generate", "diffuse"), default="generate",
                        help="generate: guided runs of --recipe, one per seed; diffuse: samples of --model")
    parser.add_argument("--clip", action="append", default=None,
                        help="a CLIP model that scores; repeat for an ensemble (default: the recipe's guides)")
    parser.add_argument("--negative", action="append", default=[], help="a prompt whose similarity is subtracted")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"recipe of the generate backend ({DEFAULT_RECIPE})")
    parser.add_argument("--set", dest="pairs", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting on top of the recipe (generate backend)")
    parser.add_argument("--model", default=DEFAULT_DIFFUSION, help=f"diffusion model ({DEFAULT_DIFFUSION})")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..ranking import ensemble_scores
    from ..recipes import recipe_settings

    if args.candidates < 1 or not 1 <= args.keep:
        raise ClipstudioError(f"need -n >= 1 and -k >= 1, got {args.candidates} and {args.keep}")
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ClipstudioError(f"output {out_dir} exists and is not a folder")
    clips = args.clip or recipe_settings(args.recipe).get("clip") or ["ViT-B-32:openai"]
    if args.from_dir:
        images, labels = folder_candidates(args.from_dir, None)
    elif args.backend == "diffuse":
        images, labels = diffuse_candidates(args.prompt, args.candidates, args.seed, args.model, args.guidance,
                                            args.steps)
    else:
        images, labels, guides = generate_candidates(args.prompt, args.candidates, args.seed, args.recipe,
                                                     args.pairs, progress=not args.quiet)
        clips = args.clip or guides
    scores, per_model = ensemble_scores(images, args.prompt, clips, args.negative)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = write_ranking(out_dir, args.prompt, images, labels, min(args.keep, len(images)), scores, per_model)
    for entry in kept:
        print(f"#{entry['rank']}: {out_dir / entry['file']} (score {entry['score']:.4f}, {entry['source']})")
    print(f"wrote {out_dir / 'contact-sheet.png'} and scores.json ({len(images)} candidates, "
          f"scored by {', '.join(clips)})")
    return 0
