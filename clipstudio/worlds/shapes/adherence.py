"""Does CLIP-guided generation draw what the prompt says? Pass rate by the colour-and-geometry check,
the independent evaluator CLIP's score, and time per image, over seeded canonical-grammar prompts."""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .captions import canonical_caption, parse_caption, spec_from_scene
from .check import check_image
from ...ranking import score_images
from .prompts import prompt_set
from .render import FORMS, render, sample_scene

EVALUATOR_CLIP = "shapes-eval"


def evaluator_scores(images: Sequence[Image.Image], prompts: Sequence[str], model: str = EVALUATOR_CLIP) -> list[float]:
    """Cosine similarity of each image to its prompt under the evaluator CLIP (never the guide)."""
    return score_images(images, prompts, model)


def reference_image(prompt: str, size: int, seed: int = 0) -> Image.Image:
    """A rendered ground-truth image for a canonical prompt (the evaluator score's yardstick)."""
    spec = parse_caption(prompt)
    rng = np.random.default_rng(seed)
    obj = spec.objects
    scene = sample_scene(rng, spec.form, background=spec.background, colours=[o.colour for o in obj],
                         shapes=[o.shape for o in obj], size=obj[0].size, position=obj[0].position)
    return Image.fromarray(render(scene, size))


@dataclass
class AdherenceReport:
    """Per-image outcomes and their summary."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        by_form: dict[str, list[bool]] = defaultdict(list)
        for row in self.rows:
            by_form[row["form"]].append(row["passed"])
        return {
            "images": len(self.rows),
            "pass_rate": float(np.mean([r["passed"] for r in self.rows])) if self.rows else 0.0,
            "pass_rate_by_form": {f: float(np.mean(v)) for f, v in sorted(by_form.items())},
            "seconds_per_image": float(np.mean([r["seconds"] for r in self.rows])) if self.rows else 0.0,
            "evaluator_score": float(np.mean([r["evaluator"] for r in self.rows])) if self.rows else 0.0,
            "evaluator_score_reference": float(np.mean([r["evaluator_reference"] for r in self.rows]))
            if self.rows else 0.0,
        }


def evaluate_generation(prompts: Sequence[str], seeds: Sequence[int] = (0,), save_dir: str | None = None,
                        recipe: str = "shapes", **options: Any) -> AdherenceReport:
    """Generate every prompt and seed with ``recipe`` and ``options`` on top (what ``clipstudio generate
    PROMPT --recipe RECIPE`` with those options makes), and judge each image."""
    from ...recipes import recipe_config
    from ...studio import Studio

    report = AdherenceReport()
    for prompt in prompts:
        for seed in seeds:
            start = time.perf_counter()
            result = Studio(recipe_config(recipe, prompt, seed=seed, **options)).run()
            seconds = time.perf_counter() - start
            check = check_image(result.image, prompt)
            reference = reference_image(prompt, result.image.size[0], seed)
            score, ref_score = evaluator_scores([result.image, reference], [prompt, prompt])
            report.rows.append({"prompt": prompt, "seed": seed, "form": parse_caption(prompt).form,
                                "passed": check.passed, "failures": check.failures, "seconds": seconds,
                                "evaluator": score, "evaluator_reference": ref_score})
            if save_dir:
                tag = "ok" if check.passed else "FAIL"
                result.save(f"{save_dir}/{len(report.rows):03d}-{tag}-{prompt.replace(' ', '_')}.png")
    return report


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    """``clipstudio eval generate``: pass rate of the default (or given) settings on grammar prompts."""
    parser = argparse.ArgumentParser(prog="clipstudio eval generate", description=main.__doc__)
    parser.add_argument("-n", type=int, default=20, help="number of prompts (cycling through the grammar forms)")
    parser.add_argument("--prompt-seed", type=int, default=1234)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a GenerateConfig setting, e.g. --set steps=50 --set 'augments=[\"affine\"]'")
    parser.add_argument("--save-dir", default=None, help="save every image here, named by outcome")
    parser.add_argument("--json", action="store_true", help="print the rows and summary as JSON")
    args = parser.parse_args(argv)
    options = {}
    for item in args.set:
        key, _, value = item.partition("=")
        options[key] = _parse_value(value)
    if args.save_dir:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
    report = evaluate_generation(prompt_set(args.n, args.prompt_seed), args.seeds, args.save_dir, **options)
    summary = report.summary()
    if args.json:
        print(json.dumps({"summary": summary, "rows": report.rows}, indent=1))
    else:
        for row in report.rows:
            mark = "pass" if row["passed"] else "FAIL " + "; ".join(row["failures"])
            print(f"{row['seconds']:6.1f}s  eval {row['evaluator']:.3f}  {row['prompt']}  [{mark}]")
        print(json.dumps(summary, indent=1))
    return 0
