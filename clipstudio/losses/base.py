"""The loss contract.

A loss is an ``nn.Module`` whose ``forward(ctx: LossContext)`` returns one value to be minimized per image of
``ctx.image``: a tensor of shape ``(N,)``. (The optimizer passes one image; a search judges several at once.)
The total objective is the weighted sum of the losses; weights live in the settings, not in the modules,
so every term is reported unweighted and weighted alike.

A loss that ``needs_prompts`` (score distillation) also implements ``set_prompts(prompts)``: the run calls it
when the loss is built and whenever its prompts change (a schedule, a live playlist).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..generators.base import LatentCode


@dataclass
class LossContext:
    """What one optimizer step offers the losses."""

    image: torch.Tensor  # (N, 3, H, W) in [0, 1]: the generator's output (N = 1), or N candidates of a search
    cutouts: torch.Tensor | None  # (N * cutn, 3, S, S): each image's augmented cutouts, shared by all CLIP losses
    init_image: torch.Tensor | None  # (1, 3, H, W) in [0, 1], when the run has an init image
    step: int
    code: LatentCode | None = None  # the latent the image was decoded from, if the generator has one (N = 1)


class Loss(nn.Module):
    """Base class: subclasses implement ``forward(ctx) -> (N,) tensor``."""

    needs_cutouts = False
    needs_prompts = False
    stochastic = False  # True: each call draws random numbers (two calls on one image may differ)

    def set_prompts(self, prompts: list) -> None:
        """Guide toward these prompts (only losses that ``needs_prompts`` use them)."""

    def forward(self, ctx: LossContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
