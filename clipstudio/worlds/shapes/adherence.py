"""Does CLIP-guided generation draw what the prompt says? Pass rate by the colour-and-geometry check,
the independent evaluator CLIP's score, the over-optimization gap and time per image, over seeded
canonical-grammar prompts."""
from __future__ import annotations

import math
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


def spherical_from_cosine(cosine: float) -> float:
    """The guidance loss's squared great-circle distance ``2*arcsin(|a-b|/2)^2`` of two unit vectors with this
    cosine similarity (``|a-b|^2 = 2 - 2 cos``; Crowson's VQGAN+CLIP)."""
    return 2 * math.asin(min(1.0, math.sqrt(max(0.0, 2 - 2 * cosine)) / 2)) ** 2


def guide_distances(images: Sequence[Image.Image], prompts: Sequence[str], clips: Sequence[str]) -> list[float]:
    """Spherical distance of each whole image to its prompt under the guides (their mean, as an ensemble's
    loss is): what the optimizer drives down."""
    per_guide = [score_images(images, prompts, clip) for clip in clips]
    return [float(np.mean([spherical_from_cosine(c) for c in cosines])) for cosines in zip(*per_guide)]


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
            # Guide distance of the generated image minus that of a true render: below zero, the optimizer
            # found images the guide prefers to the truth (over-optimization, adversarial texture).
            "guide_distance": float(np.mean([r["guide_distance"] for r in self.rows])) if self.rows else 0.0,
            "guide_distance_reference": float(np.mean([r["guide_distance_reference"] for r in self.rows]))
            if self.rows else 0.0,
            "over_optimization_gap": float(np.mean([r["gap"] for r in self.rows])) if self.rows else 0.0,
        }


def evaluate_generation(prompts: Sequence[str], seeds: Sequence[int] = (0,), save_dir: str | None = None,
                        recipe: str = "shapes", **options: Any) -> AdherenceReport:
    """Generate every prompt and seed with ``recipe`` and ``options`` on top (what ``clipstudio generate
    PROMPT --recipe RECIPE`` with those options makes), and judge each image."""
    report = AdherenceReport()
    for prompt in prompts:
        for seed in seeds:
            start = time.perf_counter()
            config = recipe_config(recipe, prompt, seed=seed, **options)
            result = Studio(config).run()
            seconds = time.perf_counter() - start
            check = check_image(result.image, prompt)
            reference = reference_image(prompt, result.image.size[0], seed)
            score, ref_score = evaluator_scores([result.image, reference], [prompt, prompt])
            distance, ref_distance = guide_distances([result.image, reference], [prompt, prompt], config.clip)
            report.rows.append({"prompt": prompt, "seed": seed, "form": parse_caption(prompt).form,
                                "passed": check.passed, "failures": check.failures, "seconds": seconds,
                                "evaluator": score, "evaluator_reference": ref_score, "guide_distance": distance,
                                "guide_distance_reference": ref_distance, "gap": distance - ref_distance})
            if save_dir:
                tag = "ok" if check.passed else "FAIL"
                result.save(f"{save_dir}/{len(report.rows):03d}-{tag}-{prompt.replace(' ', '_')}.png")
    return report


def plot_sweep(key: str, values: Sequence[Any], summaries: Sequence[dict], path: str, title: str = "") -> None:
    """One PNG of a sweep: pass rate and the evaluator's score (with true renders' as a dashed line) against
    the swept setting, written atomically (matplotlib is imported here only)."""
    from ...errors import ClipstudioError
    from ...images import atomic_write
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ClipstudioError("plotting a sweep needs matplotlib: pip install matplotlib") from None
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = list(values) if numeric else list(range(len(values)))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(x, [s["pass_rate"] for s in summaries], marker="o", label="colour-and-geometry pass rate")
    ax.plot(x, [s["evaluator_score"] for s in summaries], marker="s", label="evaluator score (shapes-eval)")
    reference = float(np.mean([s["evaluator_score_reference"] for s in summaries]))
    ax.axhline(reference, ls="--", color="grey", lw=1, label=f"evaluator score of true renders ({reference:.2f})")
    if not numeric:
        ax.set_xticks(x, [str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7, frameon=False)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
