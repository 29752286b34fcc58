"""Zero-shot attribute accuracy under a PGD attack, on the held-out scenes of :mod:`.zeroshot`.

The same scenes and candidate groups as ``clipstudio eval clip`` (at ``eps`` 0 the figures agree with it);
the attack perturbs each rendered scene, at the model's input size, to raise the cross-entropy of all its
candidate groups at once (every attribute the scene is scored on), within the ``norm`` ball of radius ``eps``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...guide.clip import ClipGuide
from ...guide.robust import pgd_attack
from .render import render_batch
from .zeroshot import ATTRIBUTES, DEFAULT_SEED, _candidate_trials, eval_scenes

PIXEL_LEVEL = 1 / 255


def _trial_tensors(trials: list[tuple[int, str, list[str]]], index: dict[str, int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scene index per trial, candidate text indices padded with -1, attribute index per trial)."""
    width = max(len(group) for _, _, group in trials)
    candidates = torch.full((len(trials), width), -1, dtype=torch.long)
    for row, (_, _, group) in enumerate(trials):
        candidates[row, :len(group)] = torch.tensor([index[t] for t in group])
    scenes = torch.tensor([idx for idx, _, _ in trials])
    attributes = torch.tensor([ATTRIBUTES.index(attr) for _, attr, _ in trials])
    return scenes, candidates, attributes


def trial_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scenes: torch.Tensor,
                 candidates: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each trial's image to its candidates (the truth first), -inf where padded."""
    texts = text_embeds[candidates.clamp(min=0)]  # (T, K, D)
    logits = torch.einsum("tkd,td->tk", texts, image_embeds[scenes])
    return logits.masked_fill(candidates < 0, float("-inf"))


def attacked_accuracy(guide: ClipGuide, n: int = 200, seed: int = DEFAULT_SEED, eps: float = 4.0,
                      norm: str = "linf", steps: int = 10, step_size: float | None = None,
                      batch: int = 250) -> dict[str, float]:
    """Per-attribute zero-shot accuracy of ``guide`` when every scene is attacked with PGD (``eps`` and
    ``step_size`` in units of 1/255; step size ``eps/4`` by default). ``eps=0`` is the clean accuracy."""
    was_training = guide.model.training
    guide.model.eval()
    scenes = eval_scenes(n, seed)
    trials = _candidate_trials(scenes)
    texts = list(dict.fromkeys(t for _, _, group in trials for t in group))
    text_embeds = torch.cat([guide.encode_text(texts[j:j + 1024]) for j in range(0, len(texts), 1024)])
    scene_of, candidates, attribute_of = _trial_tensors(trials, {t: i for i, t in enumerate(texts)})
    scale = float(guide.model.logit_scale.exp()) if hasattr(guide.model, "logit_scale") else 100.0
    generator = torch.Generator().manual_seed(seed)
    correct = torch.zeros(len(trials), dtype=torch.bool)
    for start in range(0, len(scenes), batch):
        images = render_batch(scenes[start:start + batch], guide.image_size).to(guide.mean.device)
        rows = ((scene_of >= start) & (scene_of < start + len(images))).nonzero().squeeze(1)
        local, cands = scene_of[rows] - start, candidates[rows]

        def loss_fn(x: torch.Tensor) -> torch.Tensor:
            logits = scale * trial_logits(guide.encode_image(x), text_embeds, local, cands)
            return F.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long), reduction="sum")

        adv = pgd_attack(loss_fn, images, norm, eps * PIXEL_LEVEL,
                         (eps / 4 if step_size is None else step_size) * PIXEL_LEVEL, steps, generator)
        with torch.no_grad():
            correct[rows] = trial_logits(guide.encode_image(adv), text_embeds, local, cands).argmax(1) == 0
    guide.model.train(was_training)
    return {a: float(correct[attribute_of == i].float().mean()) for i, a in enumerate(ATTRIBUTES)
            if bool((attribute_of == i).any())}


def format_robust_table(name: str, by_eps: dict[float, dict[str, float]], n: int, norm: str, steps: int) -> str:
    """Accuracy per attribute (rows) and attack radius (columns) as plain text."""
    eps_list = list(by_eps)
    head = f"{'attribute':<12}" + "".join(f"{('clean' if e == 0 else f'eps {e:g}/255'):>13}" for e in eps_list)
    lines = [f"zero-shot accuracy of {name} under {steps}-step PGD ({norm}), {n} scenes per form", head]
    for attr in by_eps[eps_list[0]]:
        lines.append(f"{attr:<12}" + "".join(f"{by_eps[e].get(attr, float('nan')) * 100:>12.1f}%" for e in eps_list))
    return "\n".join(lines)
