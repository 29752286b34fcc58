"""How best-of-N CLIP ranking moves the shapes world's colour-and-geometry pass rate.

For each prompt of a seeded prompt set, ``max(ns)`` candidates are made once (guided-generation seeds, or
samples of the embedded diffusion model); for each N the candidate a CLIP ranker scores best among the first
N is checked with :func:`clipstudio.worlds.shapes.check.check_image`. The report also gives the fraction of
candidates that pass (what best-of-1 is on average) and the fraction of prompts where any of the N passes
(the most a ranker could reach).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ...ranking import ensemble_scores
from .check import check_image
from .prompts import prompt_set


def make_candidates(backend: str, prompt: str, n: int, seed: int, generate: dict[str, Any] | None = None,
                    diffuser=None) -> list[Image.Image]:
    """``n`` candidates for ``prompt``: seeds ``seed..seed+n-1`` of the world's default recipe (with the
    ``generate`` settings on top), or one seeded batch of ``diffuser`` samples."""
    if backend == "diffuse":
        from ...diffusion.backend import to_pil

        return to_pil(diffuser.generate(prompt, n=n, seed=seed))
    from ...recipes import recipe_config
    from ...studio import Studio

    config = recipe_config("shapes", prompt, **(generate or {}))
    return [Studio(config.replace(seed=seed + i)).run().image for i in range(n)]


def best_of_n(backend: str, n_prompts: int = 10, prompt_seed: int = 2024, ns: Sequence[int] = (1, 4, 16),
              rankers: Sequence[str] = ("shapes-eval", "shapes-guide"), seed: int = 0,
              generate: dict[str, Any] | None = None, part: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The pass rates of best-of-N for each ranker and N (see the module docstring); ``part=(i, k)`` takes
    every k-th prompt from the i-th, so k processes can share a prompt set (their ``passed`` counts add up)."""
    diffuser = None
    if backend == "diffuse":
        from ...diffusion.backend import load_embedded_backend

        diffuser = load_embedded_backend("shapes-diffusion")
    prompts = prompt_set(n_prompts, seed=prompt_seed)[part[0]::part[1]]
    top = max(ns)
    picked = {ranker: {n: 0 for n in ns} for ranker in rankers}
    any_pass = {n: 0 for n in ns}
    candidates_passed = 0
    start = time.perf_counter()
    for prompt in prompts:
        images = make_candidates(backend, prompt, top, seed, generate, diffuser)
        passed = [check_image(image, prompt).passed for image in images]
        candidates_passed += sum(passed)
        for n in ns:
            any_pass[n] += any(passed[:n])
        for ranker in rankers:
            scores, _ = ensemble_scores(images, prompt, [ranker])
            for n in ns:
                best = max(range(n), key=lambda i: scores[i])
                picked[ranker][n] += passed[best]
    count = len(prompts)
    return {"backend": backend, "prompts": count, "prompt_seed": prompt_seed, "candidates": top,
            "generate": generate or {}, "seconds": round(time.perf_counter() - start, 1),
            "candidate_pass_rate": candidates_passed / (count * top),
            "any_of_n": {n: any_pass[n] / count for n in ns},
            "best_of_n": {ranker: {n: picked[ranker][n] / count for n in ns} for ranker in rankers},
            "passed": {"candidates": candidates_passed, "any_of_n": any_pass, "best_of_n": picked}}
