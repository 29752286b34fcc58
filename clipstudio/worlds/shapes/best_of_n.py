"""How well a ranker picks among candidates, measured by the shapes world's colour-and-geometry check.

For each prompt of a seeded prompt set, ``max(ns)`` candidates are made once (guided-generation seeds, or
samples of an embedded diffusion model); for each N the candidate a ranker scores best among the first N is
checked with :func:`clipstudio.worlds.shapes.check.check_image`. The report also gives the fraction of
candidates that pass (what best-of-1 is on average), the fraction of prompts where any of the N passes (the
most a ranker could reach), and each ranker's within-prompt AUC (how often it scores a passing candidate above
a failing one of the same prompt). A reward fine-tune that keeps the reward's best of N (RAFT) learns from
what the reward picks, so this is also the ceiling such a reward offers before any training.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ...guide.clip import load_clip
from ...ranking import best_of_k_rate, ensemble_scores, within_prompt_auc
from .check import check_image
from .prompts import prompt_set

Ranker = Callable[[Sequence[Image.Image], str], list]


def make_candidates(backend: str, prompt: str, n: int, seed: int, generate: dict[str, Any] | None = None,
                    diffuser: Any = None, diffuse: dict[str, Any] | None = None) -> list[Image.Image]:
    """``n`` candidates for ``prompt``: seeds ``seed..seed+n-1`` of the world's default recipe (with the
    ``generate`` settings on top), or one seeded batch of ``diffuser`` samples (``diffuse``: its
    ``generate`` keywords, such as guidance and steps)."""
    if backend == "diffuse":
        from ...diffusion.backend import to_pil

        return to_pil(diffuser.generate(prompt, n=n, seed=seed, **(diffuse or {})))
    from ...recipes import recipe_config
    from ...studio import Studio

    config = recipe_config("shapes", prompt, **(generate or {}))
    return [Studio(config.replace(seed=seed + i)).run().image for i in range(n)]


def make_ranker(name: str) -> Ranker:
    """``scores(images, prompt)`` of a ranker: a reward of :mod:`.train_reward` by its name (so what a reward
    fine-tune keeps can be judged before training), else the cosine under the CLIP model of that name."""
    from .train_reward import REWARDS

    if name not in REWARDS:
        load_clip(name)                 # an unknown name fails now, in one line, not after the first candidates
        return lambda images, prompt: ensemble_scores(images, prompt, [name])[0]
    reward = REWARDS[name].make()

    @torch.no_grad()
    def scores(images: Sequence[Image.Image], prompt: str) -> list:
        batch = torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) for im in images])
        return torch.as_tensor(reward(batch.float() / 255, [prompt] * len(images))).float().tolist()
    return scores


def best_of_n(backend: str, n_prompts: int = 10, prompt_seed: int = 2024, ns: Sequence[int] = (1, 4, 16),
              rankers: Sequence[str] = ("shapes-eval", "shapes-guide"), seed: int = 0,
              generate: dict[str, Any] | None = None, part: tuple[int, int] = (0, 1),
              model: str = "shapes-diffusion", diffuse: Optional[dict[str, Any]] = None,
              diffuser: Any = None) -> dict[str, Any]:
    """The pass rates of best-of-N for each ranker and N, and each ranker's AUC (see the module docstring);
    ``part=(i, k)`` takes every k-th prompt from the i-th, so k processes can share a prompt set (their
    ``passed`` counts add up). ``model`` (an embedded name, or the label of a loaded ``diffuser``) and
    ``diffuse`` (guidance, steps, ...) apply to ``backend='diffuse'``."""
    if backend == "diffuse" and diffuser is None:
        from ...diffusion.backend import load_embedded_backend

        diffuser = load_embedded_backend(model)
    scorers = {name: make_ranker(name) for name in rankers}
    prompts = prompt_set(n_prompts, seed=prompt_seed)[part[0]::part[1]]
    top = max(ns)
    passed, scores = [], {name: [] for name in rankers}
    start = time.perf_counter()
    for prompt in prompts:
        images = make_candidates(backend, prompt, top, seed, generate, diffuser, diffuse)
        passed.append([check_image(image, prompt).passed for image in images])
        for name, scorer in scorers.items():
            scores[name].append(scorer(images, prompt))
    return selection_report(torch.tensor(passed), {k: torch.tensor(v) for k, v in scores.items()}, ns) | {
        "backend": backend, "model": model if backend == "diffuse" else None, "diffuse": diffuse or {},
        "prompt_seed": prompt_seed, "generate": generate or {}, "seconds": round(time.perf_counter() - start, 1)}


def selection_report(passed: torch.Tensor, scores: dict[str, torch.Tensor], ns: Sequence[int]) -> dict[str, Any]:
    """The figures of :func:`best_of_n` from the (prompts, candidates) pass table and each ranker's scores."""
    count = len(passed)
    any_pass = {n: int(passed[:, :n].any(dim=1).sum()) for n in ns}
    picked = {name: {n: round(best_of_k_rate(passed, s, n) * count) for n in ns} for name, s in scores.items()}
    return {"prompts": count, "candidates": passed.shape[1],
            "candidate_pass_rate": float(passed.float().mean()),
            "any_of_n": {n: any_pass[n] / count for n in ns},
            "best_of_n": {name: {n: picked[name][n] / count for n in ns} for name in scores},
            "auc": {name: within_prompt_auc(passed, s) for name, s in scores.items()},
            "passed": {"candidates": int(passed.sum()), "any_of_n": any_pass, "best_of_n": picked}}
