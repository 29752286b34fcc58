"""CLIP ranking: generate several candidates and keep those a CLIP model scores best."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import GenerateConfig
from .devices import resolve_device
from .errors import ClipstudioError
from .guide.clip import load_clip
from .guide.prompts import Prompt, negative_prompt, parse_prompts
from .studio import GenerateResult, Studio


def _to_batch(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """Images (PIL, or HxWx3 uint8 arrays) as one NCHW batch at ``size``, resized bicubic with antialiasing."""
    arrays = [np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.float32) / 255.0
              for img in images]
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    return torch.nn.functional.interpolate(batch, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)


@torch.no_grad()
def clip_scores(images: Sequence[Image.Image], prompts: Sequence[Prompt], clip: str, device: str = "cpu") -> list[float]:
    """Weighted cosine similarity of each whole image to the text prompts (negative weights subtract)."""
    texts = [p for p in prompts if not p.is_image]
    if not texts:
        raise ClipstudioError("ranking needs at least one text prompt")
    device = str(resolve_device(device))
    guide = load_clip(clip, device)
    image_embeds = guide.encode_image(_to_batch(images, guide.image_size).to(device))
    text_embeds = guide.encode_text([p.text for p in texts])
    weights = torch.tensor([p.weight for p in texts], device=image_embeds.device)
    return ((image_embeds @ text_embeds.T) * weights).sum(-1).div(weights.abs().sum()).tolist()


@torch.no_grad()
def score_images(images: Sequence[Image.Image | np.ndarray], texts: Sequence[str], clip: str,
                 device: str = "cpu") -> list[float]:
    """Cosine similarity of each whole image to its own text (``texts[i]`` for ``images[i]``): the one
    image-scoring function, for evaluators and reports alike."""
    if len(images) != len(texts):
        raise ClipstudioError(f"score_images needs one text per image, got {len(images)} and {len(texts)}")
    device = str(resolve_device(device))
    guide = load_clip(clip, device)
    image_embeds = guide.encode_image(_to_batch(images, guide.image_size).to(device))
    return (image_embeds * guide.encode_text(list(texts))).sum(-1).tolist()


def rank_images(images: Sequence[Image.Image], prompt: str, clip: str, negative: Sequence[str] = (),
                device: str = "cpu") -> list[int]:
    """Indices of ``images`` from best to worst by :func:`clip_scores`."""
    prompts = parse_prompts(prompt) + [negative_prompt(n) for n in negative]
    scores = clip_scores(images, prompts, clip, device)
    return sorted(range(len(images)), key=lambda i: -scores[i])


def generate_ranked(config: GenerateConfig, keep: int = 1, rank_clip: str | None = None
                    ) -> list[tuple[float, GenerateResult]]:
    """Run one guided generation per seed ``seed .. seed+candidates-1`` and return the ``keep`` best
    ``(score, result)`` pairs, best first. ``rank_clip`` defaults to the first guiding model.

    Each result records the settings of its own run (its seed, one candidate), so ``--from`` on a kept
    image reproduces exactly that image.
    """
    candidates = config.candidates
    if candidates < 1 or not 1 <= keep <= candidates:
        raise ClipstudioError(f"need candidates >= 1 and 1 <= keep <= candidates, got {candidates} and {keep}")
    runs = [config.replace(seed=config.seed + i, candidates=1) for i in range(candidates)]
    results = [Studio(run).run() for run in runs]
    clip = rank_clip or config.clip[0]
    prompts = parse_prompts(config.prompt) + [negative_prompt(n) for n in config.negative] if config.prompt.strip() else []
    scores = clip_scores([r.image for r in results], prompts, clip, config.device)
    order = sorted(range(candidates), key=lambda i: -scores[i])
    return [(scores[i], results[i]) for i in order[:keep]]
