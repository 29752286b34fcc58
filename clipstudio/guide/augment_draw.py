"""Every augmentation's random parameters for a batch of cutouts from one vectorized draw (issue 15).

Kornia draws each module's parameters with a dozen small calls (a sampler per quantity, a Bernoulli gate, a
permutation, each with its checks), which at 16 cutouts of 32 px costs about as much as applying them. Here
the ranges are read once from each module's own parameter generator, so the distributions stay kornia's,
and the uniform numbers a whole batch needs (crop boxes, noise levels, every module's gates and factors) come
from one ``torch.rand``: the same distributions from another random stream, so a seed gives other cutouts
than kornia's own draws do. The result is kornia's parameter dicts, which kornia's ``forward(params=...)``
and :func:`~clipstudio.guide.fast_augments.apply_augment` both replay.

A module without a plan here (perspective, erasing, blur...) draws through its own ``forward_parameters``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# ColorJiggle / ColorJitter factors, in the order kornia's generator returns them.
_COLOUR_COLUMNS = ("brightness", "contrast", "hue", "saturation")


@dataclass(frozen=True)
class DrawPlan:
    """How to turn uniform numbers into one module's kornia parameters: ``1 + len(low)`` per sample (the gate,
    then each quantity, ``low + u * span`` as kornia's samplers compute it) and ``per_batch`` more for the
    whole batch."""

    p: float
    low: torch.Tensor  # (k,) float32, as kornia's samplers hold them
    span: torch.Tensor  # high - low
    per_batch: int
    build: Callable[[torch.Tensor, torch.Tensor, tuple[int, ...]], dict]  # (values (N, k), batch u, shape)

    @property
    def columns(self) -> int:
        return 1 + self.low.shape[0]


def _bounds(sampler, neutral: float) -> tuple[float, float]:
    """A kornia UniformDistribution's (low, high); (neutral, neutral) where the quantity is not drawn."""
    if sampler is None:
        return neutral, neutral
    return float(sampler.low), float(sampler.high)


def plan_for(aug: nn.Module) -> DrawPlan | None:
    """The draw plan of a kornia RandomAffine, ColorJiggle or ColorJitter (or a subclass) drawn per sample;
    None for anything else (which then draws through its own ``forward_parameters``)."""
    import kornia.augmentation as K

    gen = getattr(aug, "_param_generator", None)
    if gen is None or getattr(aug, "same_on_batch", False) or getattr(aug, "p_batch", 1.0) != 1.0:
        return None
    if isinstance(aug, K.RandomAffine):  # angle, translate x, y, scale x, y, shear x, y
        bounds = [_bounds(gen.degree_sampler, 0.0), _bounds(gen.translate_x_sampler, 0.0),
                  _bounds(gen.translate_y_sampler, 0.0), _bounds(gen.scale_2_sampler, 1.0),
                  _bounds(gen.scale_2_sampler if gen.scale_4_sampler is None else gen.scale_4_sampler, 1.0),
                  _bounds(gen.shear_x_sampler, 0.0), _bounds(gen.shear_y_sampler, 0.0)]
        tied_scale = gen.scale_4_sampler is None  # kornia draws one scale for both axes unless given four
        build = lambda values, _, shape: _affine_params(values, shape, tied_scale)  # noqa: E731
        return _plan(aug.p, bounds, 0, build)
    if isinstance(aug, (K.ColorJiggle, K.ColorJitter)):
        bounds = [_bounds(getattr(gen, f"{name}_sampler"), 0.0 if name == "hue" else 1.0)
                  for name in _COLOUR_COLUMNS]
        return _plan(aug.p, bounds, 4, _colour_params)
    return None


def _plan(p: float, bounds: list[tuple[float, float]], per_batch: int, build) -> DrawPlan:
    low, high = torch.tensor(bounds, dtype=torch.float32).unbind(1)
    return DrawPlan(float(p), low, high - low, per_batch, build)


def _affine_params(values: torch.Tensor, shape: tuple[int, ...], tied_scale: bool) -> dict:
    """RandomAffine's parameters (AffineGenerator's keys and layout) from the drawn quantities."""
    height, width = shape[-2], shape[-1]
    size = torch.tensor([width, height], dtype=values.dtype)
    scale = values[:, 3:4].expand(-1, 2) if tied_scale else values[:, 3:5]
    centre = (size / 2.0 - 0.5).expand(values.shape[0], 2)
    return {"translations": values[:, 1:3] * size, "center": centre, "scale": scale, "angle": values[:, 0],
            "shear_x": values[:, 5], "shear_y": values[:, 6]}


def _colour_params(values: torch.Tensor, batch_u: torch.Tensor, _shape) -> dict:
    """ColorJiggle's parameters; the order of the four steps is a uniform random permutation, as randperm's."""
    return {"brightness_factor": values[:, 0], "contrast_factor": values[:, 1], "hue_factor": values[:, 2],
            "saturation_factor": values[:, 3], "order": batch_u.argsort()}


def uniform_count(plans: list[DrawPlan | None], samples: int) -> int:
    """How many uniform numbers :func:`draw_augment_params` reads for ``samples`` cutouts."""
    return sum(plan.columns * samples + plan.per_batch for plan in plans if plan is not None)


def draw_augment_params(augments: list[nn.Module], plans: list[DrawPlan | None], shape: tuple[int, ...],
                        uniforms: torch.Tensor) -> list[dict]:
    """Kornia parameter dicts for ``augments`` on a batch of ``shape`` (N, C, H, W), read from ``uniforms``
    (:func:`uniform_count` numbers in [0, 1)); modules without a plan draw through ``forward_parameters``."""
    samples, offset, out = shape[0], 0, []
    for aug, plan in zip(augments, plans):
        if plan is None:
            out.append(aug.forward_parameters(torch.Size(shape)))
            continue
        block = uniforms[offset:offset + plan.columns * samples].view(samples, plan.columns)
        offset += plan.columns * samples
        batch_u = uniforms[offset:offset + plan.per_batch]
        offset += plan.per_batch
        params = plan.build(torch.addcmul(plan.low, block[:, 1:], plan.span), batch_u, shape)
        params["batch_prob"] = (block[:, 0] < plan.p).float()
        params["forward_input_shape"] = torch.tensor(shape, dtype=torch.long)
        out.append(params)
    return out
