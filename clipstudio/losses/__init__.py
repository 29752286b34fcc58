"""Loss registry: a plain dict of name -> class, with :func:`list_losses`."""
from __future__ import annotations

from .base import Loss, LossContext
from .clip_loss import ClipLoss, spherical_distance, stop_gradient_below
from .regularizers import AnchorLoss, PerceptualLoss, TVLoss, total_variation

LOSSES: dict[str, type[Loss]] = {
    "clip": ClipLoss,
    "tv": TVLoss,
    "anchor": AnchorLoss,
    "perceptual": PerceptualLoss,
}


def list_losses() -> list[str]:
    """Names of the registered losses."""
    return sorted(LOSSES)


__all__ = [
    "LOSSES", "AnchorLoss", "ClipLoss", "Loss", "LossContext", "PerceptualLoss", "TVLoss",
    "list_losses", "spherical_distance", "stop_gradient_below", "total_variation",
]
