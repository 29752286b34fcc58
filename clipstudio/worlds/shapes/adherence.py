"""Does CLIP-guided generation draw what the prompt says? Pass rate by the colour-and-geometry check,
the independent evaluator CLIP's score, and time per image, over seeded canonical-grammar prompts."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ...ranking import score_images
from ...recipes import recipe_config
from ...studio import Studio
from .captions import parse_caption
from .check import check_image
from .render import render, sample_scene

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
