"""Compare the CLIP-guided optimizer with a CFG diffusion model on the same prompts and seeds.

For each method: the share of images that pass the shapes world's colour-and-geometry check (only where every
prompt is a shapes-world prompt), the evaluator-CLIP score (:func:`clipstudio.ranking.score_images` with a
model that did not guide: ``shapes-eval`` by default), wall time per image and the peak resident memory of a
fresh process running only that method. Writes a markdown report, results.json and a contact sheet (one row
per prompt and seed, one column per method). The command is ``clipstudio compare`` (commands/compare.py).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from clipstudio import embedded
from clipstudio.config import GenerateConfig
from clipstudio.diffusion.config import DiffuseConfig
from clipstudio.errors import ClipstudioError

WORLD_RECIPE = "shapes"  # the CLIP-guided side runs the world's default recipe unless told otherwise
METHODS = ("clip-guided", "cfg-diffusion")       # 'clip-guided:GENERATOR' and 'cfg-diffusion:MODEL' also
DEFAULT_EVALUATOR = "shapes-eval"


@dataclass
class ComparePlan:
    """Every image a comparison makes, as validated settings: per method, one entry per (prompt, seed)."""
    prompts: list[str]
    seeds: list[int]
    runs: dict[str, list[dict[str, Any]]]           # method -> full settings dicts (picklable for a child)
    evaluator: str = DEFAULT_EVALUATOR
    shapes_prompts: bool = True                      # every prompt is in the world's grammar: check pass rates
    notes: dict[str, Any] = field(default_factory=dict)


def clip_generator(method: str) -> Optional[str]:
    """The generator of a 'clip-guided:GENERATOR' method (None: the recipe's); a one-line error if unknown."""
    from clipstudio.generators import list_generators
    base, _, generator = method.partition(":")
    if base not in METHODS:
        raise ClipstudioError(f"unknown method '{method}'; choose one of: {', '.join(METHODS)}, "
                              f"clip-guided:GENERATOR or cfg-diffusion:MODEL")
    if base == "cfg-diffusion":
        return None
    if generator and generator not in list_generators():
        raise ClipstudioError(f"unknown generator '{generator}' in method '{method}'; "
                              f"choose one of: {', '.join(list_generators())}")
    return generator or None


def is_shapes_prompt(prompt: str) -> bool:
    """Whether a prompt is in the shapes world's canonical grammar (so its images can be checked)."""
    from clipstudio.worlds.shapes.captions import parse_caption
    try:
        parse_caption(prompt)
    except ValueError:
        return False
    return True


def clip_guided_config(prompt: str, seed: int, generator: Optional[str], recipe: Optional[str],
                       overrides: dict[str, Any]) -> GenerateConfig:
    """One CLIP-guided run's settings: the recipe (its section for ``generator``), then the overrides."""
    from clipstudio.recipes import recipe_config
    from clipstudio.studio import validate_config
    given = {**overrides, **({"generator": generator} if generator else {})}
    if recipe:
        config = recipe_config(recipe, prompt, seed=seed, **given)
    else:
        config = GenerateConfig.from_dict({**given, "prompt": prompt, "seed": seed})
    return validate_config(config.replace(candidates=1))


def plan_compare(prompts: Sequence[str], seeds: Sequence[int], methods: Sequence[str] = METHODS, *,
                 recipe: Optional[str] = WORLD_RECIPE, clip_overrides: Optional[dict[str, Any]] = None,
                 diffuse: Optional[DiffuseConfig] = None, evaluator: str = DEFAULT_EVALUATOR) -> ComparePlan:
    """Validate every setting of every method and build the runs, before anything is generated."""
    prompts, seeds = list(prompts), list(seeds)
    if not prompts or not seeds:
        raise ClipstudioError("compare needs at least one prompt and one seed")
    if not methods:
        raise ClipstudioError("compare needs at least one method")
    if not isinstance(evaluator, str) or not evaluator.strip():
        raise ClipstudioError("compare needs an evaluator CLIP (--eval-clip)")
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        generator = clip_generator(method)
        if method.partition(":")[0] == "cfg-diffusion":
            base = (diffuse or DiffuseConfig()).replace(n=1, scale=1)
            if method.partition(":")[2]:                  # 'cfg-diffusion:MODEL': another embedded model
                base = base.replace(model=method.partition(":")[2], pipeline=None)
            if not base.model and not base.pipeline:
                raise ClipstudioError("the cfg-diffusion method needs an embedded --model or a --pipeline")
            if base.model:
                embedded.embedded_model(base.model, "diffusion")     # an unknown model: one line, now
            runs[method] = [base.replace(prompt=p, seed=s).validate().to_full_dict() for p in prompts for s in seeds]
        else:
            runs[method] = [clip_guided_config(p, s, generator, recipe, dict(clip_overrides or {})).to_full_dict()
                            for p in prompts for s in seeds]
    return ComparePlan(prompts, seeds, runs, evaluator, all(map(is_shapes_prompt, prompts)),
                       {"recipe": recipe, "clip_overrides": clip_overrides or {},
                        "diffuse": (diffuse or DiffuseConfig()).to_dict()})


def _run_method(method: str, runs: Sequence[dict[str, Any]], threads: int) -> dict:
    """Make every image of one method in this process; images as HxWx3 uint8 arrays."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    if method.partition(":")[0] == "cfg-diffusion":
        make = _diffusion_maker(runs[0])
    else:
        make = _clip_guided_image
    images, seconds = [], []
    for settings in runs:
        t0 = time.perf_counter()
        images.append(make(settings))
        seconds.append(time.perf_counter() - t0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": images, "seconds": seconds, "peak_mb": peak_kb / 1024}


def _clip_guided_image(settings: dict[str, Any]) -> np.ndarray:
    from clipstudio.studio import Studio
    return np.asarray(Studio(GenerateConfig.from_dict(settings)).run().image.convert("RGB"))


def _diffusion_maker(first: dict[str, Any]):
    """A settings -> image function around one loaded backend (loading is not counted per image)."""
    from clipstudio.diffusion.backend import load_config_backend, resolve_model_defaults, sample_config
    from clipstudio.images import tensor_to_pil
    backend = load_config_backend(DiffuseConfig.from_dict(first))

    def make(settings: dict[str, Any]) -> np.ndarray:
        config = resolve_model_defaults(DiffuseConfig.from_dict(settings), backend)
        return np.asarray(tensor_to_pil(sample_config(config, backend)[0]))
    return make


def _child(q, *args):
    try:
        q.put(_run_method(*args))
    except Exception as e:  # reported to the parent as one line
        q.put({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


def run_isolated(method: str, runs: Sequence[dict[str, Any]], threads: int = 0) -> dict:
    """_run_method in a fresh spawned process, so its peak memory is its own."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q, method, list(runs), threads))
    proc.start()
    out = q.get()
    proc.join()
    if "error" in out:
        raise ClipstudioError(f"{method} failed: {out['error']}")
    return out


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str], methods: Sequence[str], path: str,
                  cell: int = 96) -> None:
    """A PNG grid: one row per (prompt, seed), one column per method, captions on the left."""
    from PIL import Image, ImageDraw

    from clipstudio.images import save_png
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
    save_png(sheet, path)


def score_method(images: Sequence[np.ndarray], captions: Sequence[str], plan: ComparePlan) -> dict[str, Any]:
    """Check pass rate (shapes-world prompts only, else None) and mean evaluator-CLIP cosine similarity."""
    from clipstudio.ranking import score_images
    rate = None
    if plan.shapes_prompts:
        from clipstudio.worlds.shapes.check import check_image
        rate = float(np.mean([check_image(im, c).passed for im, c in zip(images, captions)]))
    return {"check_pass_rate": rate, "eval_clip_score": float(np.mean(score_images(images, captions, plan.evaluator)))}


def compare(plan: ComparePlan, out_dir: str, threads: int = 0, isolated: bool = True) -> dict:
    """Run each method of a validated plan; write report.md, sheet.png and results.json in out_dir.

    ``isolated`` runs each method in a fresh process so that its peak memory is its own; without it (tests)
    the methods run here and peak memory is this process's.
    """
    from clipstudio.images import atomic_write
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    captions = [p for p in plan.prompts for _ in plan.seeds]
    results, images = {}, {}
    for m, runs in plan.runs.items():
        r = run_isolated(m, runs, threads) if isolated else _run_method(m, runs, threads)
        images[m] = r["images"]
        results[m] = {**score_method(r["images"], captions, plan), "seconds_per_image": float(np.mean(r["seconds"])),
                      "peak_rss_mb": r["peak_mb"], "n": len(captions)}
    methods = list(plan.runs)
    labels = [f"{p} (seed {s})" for p in plan.prompts for s in plan.seeds]
    rows = [[images[m][i] for m in methods] for i in range(len(captions))]
    contact_sheet(rows, labels, methods, str(Path(out_dir, "sheet.png")))
    report = "\n".join(report_lines(plan, results, threads))
    atomic_write(Path(out_dir, "report.md"), lambda f: f.write(report.encode()))
    atomic_write(Path(out_dir, "results.json"), lambda f: f.write(json.dumps(results, indent=2).encode()))
    return results


def report_lines(plan: ComparePlan, results: dict, threads: int) -> list[str]:
    """The markdown report: one table row per method."""
    rate_note = ("" if plan.shapes_prompts else
                 " (n/a: not every prompt is a shapes-world prompt, so the check does not apply)")
    lines = ["# CLIP-guided optimizer vs CFG diffusion", "",
             f"{len(plan.prompts)} prompts x {len(plan.seeds)} seeds; settings: `{json.dumps(plan.notes)}`; "
             f"torch threads {threads or 'default'}.", "",
             f"| method | check pass rate{rate_note} | eval-CLIP score ({plan.evaluator}) | s / image | peak RSS (MB) |",
             "|---|---|---|---|---|"]
    for m, r in results.items():
        rate = "n/a" if r["check_pass_rate"] is None else f"{r['check_pass_rate']:.3f}"
        lines.append(f"| {m} | {rate} | {r['eval_clip_score']:.4f} | {r['seconds_per_image']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return lines + ["", "The eval-CLIP score is the cosine similarity of image and prompt under the evaluator "
                    "(clipstudio.ranking.score_images). Peak RSS is the maximum resident memory of a fresh "
                    "process that ran only that method.", "", "![contact sheet](sheet.png)", ""]
