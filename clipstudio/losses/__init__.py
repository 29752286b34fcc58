"""Loss registry: a plain dict of name -> class, with :func:`list_losses`."""
from __future__ import annotations

from ..errors import ClipstudioError
from .base import Loss, LossContext
from .clip_loss import ClipLoss, spherical_distance, stop_gradient_below
from .regularizers import AnchorLoss, PerceptualLoss, TVLoss, total_variation
from .score_distillation import ScoreDistillationLoss

# Regularizers a run weights by name (``GenerateConfig.losses``); the CLIP loss is built per guide.
LOSSES: dict[str, type[Loss]] = {
    "tv": TVLoss,
    "anchor": AnchorLoss,
    "perceptual": PerceptualLoss,
    "sds": ScoreDistillationLoss,
}


def list_losses() -> list[str]:
    """Names of the registered regularizers."""
    return sorted(LOSSES)


def build_loss(name: str, prompts: list | None = None, **options) -> Loss:
    """The regularizer registered as ``name``, built with its options (e.g. ``net`` for perceptual); a loss
    that ``needs_prompts`` is given the run's ``prompts``."""
    if name not in LOSSES:
        raise ClipstudioError(f"unknown loss '{name}'; choose from: {', '.join(list_losses())}")
    try:
        loss = LOSSES[name](**options)
    except TypeError:
        raise ClipstudioError(f"loss '{name}' has no option(s): {', '.join(sorted(options))}") from None
    if loss.needs_prompts:
        loss.set_prompts(prompts or [])
    return loss


__all__ = [
    "LOSSES", "AnchorLoss", "build_loss", "ClipLoss", "Loss", "LossContext", "PerceptualLoss", "ScoreDistillationLoss", "TVLoss",
    "list_losses", "spherical_distance", "stop_gradient_below", "total_variation",
]
