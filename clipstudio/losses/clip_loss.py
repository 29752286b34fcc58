"""CLIP guidance loss: spherical distance between cutout embeddings and weighted prompt embeddings."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..guide.clip import ClipGuide
from ..guide.prompts import Prompt
from .base import Loss, LossContext


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance ``2*arcsin(|a-b|/2)^2`` between unit vectors (Crowson's VQGAN+CLIP)."""
    return (a - b).norm(dim=-1).div(2).clamp(max=1.0).arcsin().pow(2).mul(2)


def stop_gradient_below(dists: torch.Tensor, stop: float) -> torch.Tensor:
    """Keep the value of ``dists`` but pass no gradient where it is already below ``stop``."""
    return torch.where(dists > stop, dists, dists.detach())


class ClipLoss(Loss):
    """Weighted sum over prompts of the mean spherical distance of the cutouts to each prompt.

    A negative weight flips the sign, so minimizing pushes the image away from that prompt.
    """

    needs_cutouts = True

    def __init__(self, guide: ClipGuide, prompts: list[Prompt], image_embeds: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.guide = guide
        texts = [p.text for p in prompts if not p.is_image and not p.terms]
        text_embeds = guide.encode_text(texts) if texts else None
        rows, text_index = [], 0
        for prompt in prompts:
            if prompt.is_image or prompt.terms:  # embedded by the caller (image files, arithmetic)
                rows.append(image_embeds[prompt.text])
            else:
                rows.append(text_embeds[text_index])
                text_index += 1
        self.register_buffer("targets", torch.stack(rows), persistent=False)
        self.register_buffer("weights", torch.tensor([p.weight for p in prompts]), persistent=False)
        self.stops = [p.stop for p in prompts]

    def forward(self, ctx: LossContext) -> torch.Tensor:
        cuts = ctx.cutouts
        if cuts.shape[-1] != self.guide.image_size:
            cuts = nn.functional.interpolate(cuts, size=self.guide.image_size, mode="bilinear", antialias=True)
        embeds = self.guide.encode_image(cuts).view(ctx.image.shape[0], -1, self.targets.shape[-1])  # (N, cutn, D)
        total = embeds.new_zeros(embeds.shape[0])
        for target, weight, stop in zip(self.targets, self.weights, self.stops):
            dists = spherical_distance(embeds, target)
            if stop > -math.inf:
                dists = stop_gradient_below(dists, stop)
            total = total + weight * dists.mean(dim=1)
        return total
