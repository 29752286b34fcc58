"""Target embeddings of prompts: texts, image files, and embedding-arithmetic combinations of both."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ClipstudioError
from ..images import load_image
from .clip import ClipGuide
from .prompts import Prompt


@torch.no_grad()
def image_file_embedding(path: str, guide: ClipGuide, device: str | torch.device = "cpu") -> torch.Tensor:
    """Unit embedding (D,) of an image file, resized to the guide's input with bicubic antialiasing."""
    image = load_image(path).to(device)
    image = nn.functional.interpolate(image, size=(guide.image_size,) * 2, mode="bicubic", antialias=True)
    return guide.encode_image(image.clamp(0, 1))[0]


@torch.no_grad()
def combination_embedding(prompt: Prompt, guide: ClipGuide, device: str | torch.device = "cpu") -> torch.Tensor:
    """Unit-length sum of the signed unit embeddings of an arithmetic prompt's terms (D,).

    Adding and subtracting the same term cancels exactly before the normalization, so it changes nothing.
    """
    total = None
    for sign, value, is_image in prompt.terms:
        embed = image_file_embedding(value, guide, device) if is_image else guide.encode_text([value])[0]
        total = sign * embed if total is None else total + sign * embed
    if total is None or float(total.norm()) < 1e-6:
        raise ClipstudioError(f"the terms of '{prompt.text}' cancel out: nothing is left to aim at")
    return nn.functional.normalize(total, dim=-1)


def target_embeddings(prompts: list[Prompt], guide: ClipGuide, device: str | torch.device = "cpu") -> torch.Tensor:
    """One unit embedding per prompt (P, D): texts in one batch, image files and combinations one by one."""
    texts = [p.text for p in prompts if not p.is_image and not p.terms]
    text_embeds = iter(guide.encode_text(texts)) if texts else iter(())
    rows = []
    for prompt in prompts:
        if prompt.terms:
            rows.append(combination_embedding(prompt, guide, device))
        elif prompt.is_image:
            rows.append(image_file_embedding(prompt.text, guide, device))
        else:
            rows.append(next(text_embeds))
    return torch.stack(rows)
