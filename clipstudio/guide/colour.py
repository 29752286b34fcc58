"""A colour jitter that is one affine colour map per cutout (issue 15: the guidance loop's speed).

Kornia's ColorJiggle runs four steps in a random order, two of them (saturation, hue) through HSV, each with a
clamp: some forty elementwise operations forward and as many backward on every cutout, which at 16 cutouts of
32 px cost a fifth of a CLIP pass. :class:`LinearColourJitter` draws the same factors (ColorJiggle's generator,
ranges, gate and random order) but makes every step linear in RGB, so the four steps in their order compose
into one 3x4 matrix per cutout, applied with one batched matrix product and a final clamp:

- brightness adds ``factor - 1`` and contrast multiplies by ``factor``, as ColorJiggle does;
- saturation blends with the Rec. 601 luma (torchvision's and PIL's definition) instead of scaling HSV
  saturation;
- hue rotates the chroma plane of YIQ by ``factor`` turns (the NTSC colour space; the classic hue-rotation
  matrix) instead of shifting the HSV hue.

Only the intermediate clamps are gone. A cutout the gate skips gets the identity matrix, which leaves its
values exactly as they were.
"""
from __future__ import annotations

import math
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch

# RGB -> YIQ (FCC NTSC), and its inverse.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
# In RGB, the map that scales YIQ's chroma plane (I, Q) by s and turns it by a is
# _GREY + s cos(a) _CHROMA_COS + s sin(a) _CHROMA_SIN (_GREY = ones(3, 1) @ luma keeps only Y).
_GREY = _YIQ_TO_RGB[:, :1] @ _RGB_TO_YIQ[:1]
_CHROMA_COS = _YIQ_TO_RGB[:, 1:] @ _RGB_TO_YIQ[1:]
_CHROMA_SIN = _YIQ_TO_RGB[:, 1:] @ np.array([[0.0, -1.0], [1.0, 0.0]]) @ _RGB_TO_YIQ[1:]


def colour_matrices(params: dict, gate: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, 4) float64 affine RGB maps ``[A | b]`` of ColorJiggle parameters, the four steps composed in
    ``params['order']``; the identity where ``gate`` is False.

    In YIQ the steps are: contrast ``c I``; saturation ``diag(1, s, s)`` (the luma blend keeps Y and scales
    the chroma plane); hue ``diag(1, R(a))``; brightness adds ``beta = factor - 1`` to every channel, i.e.
    ``(beta, 0, 0)``, which saturation and hue leave alone (grey has no chroma) and contrast scales. So the
    linear parts commute, ``A = c Yinv diag(1, s R(a)) Y`` in any order, and the order only decides whether
    contrast scales the brightness offset: ``b = beta * (c if contrast comes after brightness else 1)``. Built
    in NumPy: a few operations on (N, 3, 3) arrays, where each torch call would cost more than its numbers."""
    brightness, contrast, saturation, hue = (params[f"{k}_factor"].detach().to("cpu", torch.float64).numpy()
                                             for k in ("brightness", "contrast", "saturation", "hue"))
    angle = hue * (-2.0 * math.pi)  # the sign that turns the hue the way HSV's shift does
    chroma_cos = (saturation * np.cos(angle))[:, None, None]
    chroma_sin = (saturation * np.sin(angle))[:, None, None]
    linear = contrast[:, None, None] * (_GREY + chroma_cos * _CHROMA_COS + chroma_sin * _CHROMA_SIN)
    order = params["order"].tolist()
    contrast_after = order.index(1) > order.index(0)  # steps: 0 brightness, 1 contrast, 2 saturation, 3 hue
    offset = (brightness - 1.0) * (contrast if contrast_after else 1.0)
    if gate is not None:
        keep = gate.detach().cpu().numpy().reshape(-1)
        linear = np.where(keep[:, None, None], linear, np.eye(3))
        offset = np.where(keep, offset, 0.0)
    return torch.from_numpy(np.concatenate([linear, np.repeat(offset[:, None, None], 3, axis=1)], 2))


def apply_colour_matrices(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``clamp(A x + b, 0, 1)`` per pixel of ``image`` (N, 3, H, W), with (N, 3, 4) maps ``[A | b]``."""
    matrix = matrix.to(image.device, image.dtype)
    flat = image.reshape(image.shape[0], 3, -1)
    return clamp_unit(torch.baddbmm(matrix[:, :, 3:], matrix[:, :, :3], flat).view_as(image))


class _ClampUnit(torch.autograd.Function):
    """``clamp(x, 0, 1)`` with autograd's gradient (passed where 0 < x < 1, else 0), the mask computed and
    applied in float arithmetic: on the CPU, the comparisons and ``where`` of autograd's clamp backward make and
    read bool tensors, 5 to 40 times slower than a float multiply here, so a clamp of 16 cutouts of 32 px costs
    160 us forward and backward through autograd and 82 us through this.
    A NaN input gets a NaN gradient where autograd gives 0 (the step is skipped either way)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(0.0, 1.0)
        ctx.save_for_backward(torch.addcmul(out, out, out, value=-1.0).sign_())  # out (1 - out) > 0: 1 inside
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (inside,) = ctx.saved_tensors
        return grad * inside


def clamp_unit(x: torch.Tensor) -> torch.Tensor:
    """``x.clamp(0, 1)``: the same values and gradient, faster on the CPU (:class:`_ClampUnit`)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _ClampUnit.apply(x)
    return x.clamp(0.0, 1.0)


class LinearColourJitter(K.ColorJiggle):
    """ColorJiggle's draws applied as one affine colour map per cutout (see the module's docstring)."""

    def apply_transform(self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any],
                        transform: torch.Tensor | None = None) -> torch.Tensor:
        return apply_colour_matrices(input, colour_matrices(params))

    def apply_batch(self, image: torch.Tensor, params: dict) -> torch.Tensor:
        """Every sample of ``image`` with the parameters this module drew: gated ones mapped, the rest as they
        are (the identity map), in one batched product with no gather or scatter."""
        gate = torch.atleast_1d(params["batch_prob"] > 0.5)
        if gate.shape[0] != image.shape[0]:  # a batch-wide gate: kornia's own path
            return self(image, params=params)
        return apply_colour_matrices(image, colour_matrices(params, gate))
