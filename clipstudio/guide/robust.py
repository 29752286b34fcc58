"""Adversarial robustness of CLIP image towers: PGD attacks and the FARE and TeCoA fine-tuning objectives.

Robust image encoders have perceptually aligned gradients (Ganz & Elad 2024, "CLIPAG"): guiding pixels by
such a model paints what the prompt says instead of adversarial texture. These are the small pure pieces a
trainer or an evaluation combines; images are NCHW in [0, 1] and radii are in those units.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ClipstudioError

NORMS: tuple[str, ...] = ("linf", "l2")
OBJECTIVES: tuple[str, ...] = ("fare", "tecoa")


def project_linf(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project a perturbation onto the L-inf ball of radius ``eps`` (Madry et al. 2018)."""
    return delta.clamp(-eps, eps)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project each image's perturbation onto the L2 ball of radius ``eps`` (Madry et al. 2018)."""
    norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (delta.dim() - 1))
    return delta * (eps / norms).clamp(max=1.0)


def random_start(images: torch.Tensor, norm: str, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random point of the ``norm`` ball around zero, the start of PGD (Madry et al. 2018)."""
    noise = torch.rand(images.shape, generator=generator, device="cpu").to(images) * 2 - 1
    if norm == "linf":
        return noise * eps
    gauss = torch.randn(images.shape, generator=generator, device="cpu").to(images)
    radius = torch.rand(images.shape[0], generator=generator, device="cpu").to(images) * eps
    return project_l2(gauss / gauss.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius.view(-1, 1, 1, 1), eps)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit ``norm``: the gradient's sign (L-inf) or its direction (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (grad.dim() - 1))


def pgd_attack(loss_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, norm: str = "linf",
               eps: float = 4 / 255, step_size: float = 1 / 255, steps: int = 10,
               generator: torch.Generator | None = None, start: bool = True) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` (a scalar) within the ``norm`` ball of radius ``eps`` around
    ``images``, kept in [0, 1] (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks"). Returns the adversarial images, detached; the model's parameters get no gradient."""
    if norm not in NORMS:
        raise ClipstudioError(f"unknown threat model '{norm}'; choose one of: {', '.join(NORMS)}")
    project = project_linf if norm == "linf" else project_l2
    images = images.detach()
    if eps <= 0 or steps <= 0:
        return images.clone()
    delta = random_start(images, norm, eps, generator) if start else torch.zeros_like(images)
    delta = (images + delta).clamp(0, 1) - images
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(images + delta), delta)
        delta = project(delta.detach() + step_size * ascent_direction(grad, norm), eps)
        delta = (images + delta).clamp(0, 1) - images
    return (images + delta).detach()


def fare_loss(embeds: torch.Tensor, clean_targets: torch.Tensor) -> torch.Tensor:
    """FARE: squared L2 distance of (unnormalized) image embeddings to the frozen original model's embeddings
    of the clean images, mean over the batch (Schlarmann et al. 2024, "Robust CLIP")."""
    return (embeds - clean_targets).pow(2).sum(dim=-1).mean()


def tecoa_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float,
               labels: torch.Tensor | None = None) -> torch.Tensor:
    """TeCoA: cross-entropy of each image over the (frozen) text embeddings, label = its own caption by
    default (Mao et al. 2023, "Understanding Zero-Shot Adversarial Robustness for Large-Scale Models")."""
    logits = logit_scale * F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    labels = torch.arange(len(image_embeds), device=logits.device) if labels is None else labels
    return F.cross_entropy(logits, labels)
