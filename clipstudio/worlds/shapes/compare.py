"""Compare the CLIP-guided optimizer with the CFG diffusion backend on the same prompts and seeds.

For each method: the share of images that pass the colour-and-geometry check, the evaluator-CLIP
score (the independent ``shapes-eval`` model, never the guide), wall time per image and the
peak resident memory of a fresh process running only that method. Writes a markdown report and a
contact sheet (one row per prompt and seed, one column per method).

    python -m clipstudio.worlds.shapes.compare -o compare/ --prompts 10 --seeds 2
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from clipstudio.errors import ClipstudioError

WORLD_RECIPE = "shapes"  # the CLIP-guided side runs the world's default recipe (its generator replaced if named)
METHODS = ("clip-guided", "cfg-diffusion")


def clip_generator(method: str) -> Optional[str]:
    """The generator of a 'clip-guided:GENERATOR' method (None: the default one); a one-line error if unknown."""
    from clipstudio.generators import list_generators
    base, _, generator = method.partition(":")
    if base not in METHODS or (generator and base != "clip-guided"):
        raise ClipstudioError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)} "
                              f"or clip-guided:GENERATOR")
    if generator and generator not in list_generators():
        raise ClipstudioError(f"unknown generator '{generator}' in method '{method}'; "
                              f"choose one of: {', '.join(list_generators())}")
    return generator or None


def _run_method(method: str, prompts: Sequence[str], seeds: Sequence[int], options: dict, threads: int) -> dict:
    """Generate every (prompt, seed) image with one method in this process; images as HxWx3 uint8 at 64 px."""
    torch.set_num_threads(threads)
    from PIL import Image
    images, seconds = [], []
    generator = clip_generator(method)
    clip_options = dict(options.get("clip_options", {}))
    if generator:
        clip_options["generator"] = generator
    if method == "cfg-diffusion":
        from clipstudio.worlds.shapes.diffusion_model import load_shapes_backend, to_uint8
        be = load_shapes_backend(options.get("checkpoint"))
    for p in prompts:
        for s in seeds:
            t0 = time.perf_counter()
            if method == "cfg-diffusion":
                arr = to_uint8(be.generate(p, seed=s, steps=options.get("steps", 50),
                                           guidance=options.get("guidance")))[0]
                img = Image.fromarray(arr)
            else:
                import clipstudio
                from clipstudio.recipes import recipe_config
                config = recipe_config(WORLD_RECIPE, p, seed=s, **clip_options)
                img = clipstudio.Studio(config).run().image.convert("RGB")
            seconds.append(time.perf_counter() - t0)
            images.append(np.asarray(img))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": images, "seconds": seconds, "peak_mb": peak_kb / 1024}


def _child(q, *args):
    try:
        q.put(_run_method(*args))
    except Exception as e:  # reported to the parent as one line
        q.put({"error": f"{type(e).__name__}: {e}"})


def run_isolated(method: str, prompts, seeds, options: dict, threads: int = 1) -> dict:
    """_run_method in a fresh spawned process, so its peak memory is its own."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q, method, list(prompts), list(seeds), options, threads))
    proc.start()
    out = q.get()
    proc.join()
    if "error" in out:
        raise ClipstudioError(f"{method} failed: {out['error']}")
    return out


def eval_clip_scores(images: Sequence[np.ndarray], captions: Sequence[str]) -> list[float]:
    """100 x cosine similarity of image and caption under the shapes-eval CLIP (the evaluator, not the guide)."""
    import torch.nn.functional as F

    from clipstudio.train.clip_train import image_normalizer, load_embedded, model_image_size
    model, tok = load_embedded("shapes-eval")
    size = model_image_size(model)
    norm = image_normalizer(model)
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255 for im in images])
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        fi = F.normalize(model.encode_image(norm(x)), dim=-1)
        ft = F.normalize(model.encode_text(tok(list(captions))), dim=-1)
    return (100 * (fi * ft).sum(-1)).tolist()


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str], methods: Sequence[str], path: str,
                  cell: int = 96) -> None:
    """A PNG grid: one row per (prompt, seed), one column per method, captions on the left."""
    from PIL import Image, ImageDraw
    label_w = 330
    W, H = label_w + cell * len(methods), 20 + cell * len(rows)
    sheet = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(sheet)
    for j, m in enumerate(methods):
        d.text((label_w + j * cell + 4, 4), m, fill="black")
    for i, (row, lab) in enumerate(zip(rows, labels)):
        d.text((4, 20 + i * cell + cell // 2 - 6), lab[:52], fill="black")
        for j, im in enumerate(row):
            sheet.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (label_w + j * cell, 20 + i * cell))
    sheet.save(path)


def compare(prompts: Sequence[str], seeds: Sequence[int], out_dir: str, methods: Sequence[str] = METHODS,
            options: Optional[dict] = None, threads: int = 1, isolated: bool = True) -> dict:
    """Run each method on every (prompt, seed); write report.md, sheet.png and results.json in out_dir.

    ``isolated`` runs each method in a fresh process so that its peak memory is its own; without it (tests)
    the methods run here and peak memory is this process's.
    """
    from clipstudio.worlds.shapes.check import check_image
    options = options or {}
    for m in methods:
        clip_generator(m)
    if not prompts or not seeds:
        raise ClipstudioError("compare needs at least one prompt and one seed")
    os.makedirs(out_dir, exist_ok=True)
    captions = [p for p in prompts for _ in seeds]
    results, images = {}, {}
    for m in methods:
        r = (run_isolated(m, prompts, seeds, options, threads) if isolated
             else _run_method(m, prompts, seeds, options, threads))
        images[m] = r["images"]
        passed = [check_image(im, c).passed for im, c in zip(r["images"], captions)]
        scores = eval_clip_scores(r["images"], captions)
        results[m] = {"check_pass_rate": float(np.mean(passed)), "eval_clip_score": float(np.mean(scores)),
                      "seconds_per_image": float(np.mean(r["seconds"])), "peak_rss_mb": r["peak_mb"],
                      "n": len(captions)}
    labels = [f"{p} (seed {s})" for p in prompts for s in seeds]
    rows = [[images[m][i] for m in methods] for i in range(len(captions))]
    contact_sheet(rows, labels, methods, os.path.join(out_dir, "sheet.png"))
    lines = ["# CLIP-guided optimizer vs CFG diffusion", "",
             f"{len(prompts)} prompts x {len(seeds)} seeds; options: `{json.dumps(options)}`; "
             f"torch threads {threads}.", "",
             "| method | check pass rate | eval-CLIP score (shapes-eval) | s / image | peak RSS (MB) |",
             "|---|---|---|---|---|"]
    for m in methods:
        r = results[m]
        lines.append(f"| {m} | {r['check_pass_rate']:.3f} | {r['eval_clip_score']:.2f} | "
                     f"{r['seconds_per_image']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Peak RSS is the maximum resident memory of a fresh process that ran only that method.",
              "", "![contact sheet](sheet.png)", ""]
    Path(out_dir, "report.md").write_text("\n".join(lines))
    Path(out_dir, "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`clipstudio compare -o DIR [--prompts N] [--seeds K]`: write DIR/report.md and DIR/sheet.png."""
    from clipstudio.worlds.shapes.diffusion_model import canonical_prompts
    ap = argparse.ArgumentParser(prog="clipstudio compare", description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default="compare")
    ap.add_argument("--prompts", type=int, default=10, help="number of canonical-grammar prompts")
    ap.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; overrides --prompts)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--generator", action="append", default=None,
                    help="run the CLIP-guided optimizer with this generator (repeatable; default: generate's)")
    ap.add_argument("--clip-steps", type=int, default=None,
                    help="optimizer steps of the CLIP-guided method (default: generate's)")
    ap.add_argument("--diffusion-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.prompts <= 0 or args.seeds <= 0:
        raise ClipstudioError("--prompts and --seeds must be positive")
    prompts = args.prompt or canonical_prompts(args.prompts, seed=7)
    clip_options = {"steps": args.clip_steps} if args.clip_steps is not None else {}
    opts = {"clip_options": clip_options, "steps": args.diffusion_steps, "guidance": args.guidance}
    methods = [f"clip-guided:{g}" for g in args.generator] if args.generator else ["clip-guided"]
    methods.append("cfg-diffusion")
    res = compare(prompts, list(range(args.seeds)), args.out, methods=methods, options=opts, threads=args.threads)
    for m, r in res.items():
        print(f"{m}: pass {r['check_pass_rate']:.3f}, eval-CLIP {r['eval_clip_score']:.2f}, "
              f"{r['seconds_per_image']:.2f} s/image, peak {r['peak_rss_mb']:.0f} MB")
    print(f"wrote {args.out}/report.md and {args.out}/sheet.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
