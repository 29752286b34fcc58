"""Kornia augmentations applied without kornia's per-call machinery (issue 15: the guidance loop's speed).

A cutout batch is small (16 cutouts of 32 px in the shapes world), so a kornia augmentation's time is mostly
its generic ``forward``: input checks, the gate over the batch, a transform matrix for every sample and a
``where`` that blends the transformed and untouched samples. :func:`apply_augment` replays the parameters that
the kornia module drew (``forward_parameters``, so the distributions are kornia's own) on the gated samples
only: affine and perspective warps as one grid and one ``grid_sample`` (:func:`warp`, the matrices solved on
the CPU in float64), the colour jitters through kornia's own step functions except the hue step
(:func:`adjust_hue`, a direct formula in a third of the operations), anything else through the module's
``apply_transform``. The cutouts equal kornia's to float32 rounding; where two colour channels tie exactly,
the hue step splits the gradient between them where kornia hands it to one (the sum is the same).

Augmentations without a fast path (e.g. a registry entry added later) run through kornia's ``forward``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

# The neutral factor of each colour step, in kornia's order (brightness, contrast, saturation, hue).
_NEUTRAL = (1.0, 1.0, 1.0, 0.0)


def adjust_hue(image: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of RGB ``image`` (N, 3, H, W) in [0, 1] by ``turns`` (N,) of the hue circle.

    Kornia's ``rgb_to_hsv`` -> shift -> ``hsv_to_rgb`` without building the HSV image: a hue shift keeps the
    value ``v`` (the largest channel) and the chroma, and each output channel is ``v - c * clamp(min(k, 4 - k),
    0, 1)`` with ``k = (n + 6 h) mod 6``, n = 5, 3, 1 for R, G, B (the sextant formula of Smith 1978, "Color
    Gamut Transform Pairs"). Kornia's guarded divisors are kept, so gray and black pixels stay finite.
    """
    max_rgb = image.amax(dim=1, keepdim=True)
    min_rgb = image.amin(dim=1, keepdim=True)
    delta = max_rgb - min_rgb
    # Kornia's guarded divisors, where(max == 0, 1, max + 1e-8) and where(delta == 0, 1, delta), as sums: the
    # same float32 values (1 + 1e-8 rounds to 1), and the gradients differ only where they are multiplied by 0.
    saturation = delta / (max_rgb + 1e-8 + (max_rgb == 0).to(image.dtype))
    chroma = max_rgb * saturation
    delta = delta + (delta == 0).to(image.dtype)
    # The sextant as kornia's rgb_to_hsv picks it (red is largest, else green, else blue), from the distances to
    # the largest channel as there, so ties split their gradient as kornia's do.
    r, g, b = (channel.unsqueeze(1) for channel in image.unbind(1))
    rc, gc, bc = (channel.unsqueeze(1) for channel in (max_rgb - image).unbind(1))
    sector = torch.where((r >= g) & (r >= b), bc - gc, torch.where(g >= b, (rc - bc) + 2.0 * delta,
                                                                    (gc - rc) + 4.0 * delta))
    hue6 = (sector / delta + 6.0 * turns.view(-1, 1, 1, 1).to(image)).remainder(6.0)
    k = (hue6 + _CHANNEL_OFFSETS.to(image)).remainder(6.0)
    return max_rgb - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


_CHANNEL_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)


def _colour_steps(aug: nn.Module) -> tuple | None:
    """The four step functions of a kornia ColorJiggle or ColorJitter, with :func:`adjust_hue` for the hue."""
    import kornia.augmentation as K
    from kornia.augmentation._2d.intensity import color_jiggle, color_jitter

    if type(aug) is K.ColorJiggle:
        return (color_jiggle._brightness_step, color_jiggle.adjust_contrast, color_jiggle.adjust_saturation,
                adjust_hue)
    if type(aug) is K.ColorJitter:
        return (color_jitter._adjust_brightness, color_jitter._adjust_contrast, color_jitter._adjust_saturation,
                adjust_hue)
    return None


def _apply_colour(aug: nn.Module, steps: tuple, image: torch.Tensor, params: dict) -> torch.Tensor:
    """Kornia's colour jitter: clamp, the four steps in the drawn order (a step whose factors are all neutral
    is skipped), clamp."""
    if getattr(aug, "_fixed_order", None) is not None:
        order = list(aug._fixed_order)
    else:
        order = params["order"].tolist()
    factors = (params["brightness_factor"], params["contrast_factor"], params["saturation_factor"],
               params["hue_factor"])
    out = _clamp_unit(image)
    for index in order:
        if bool((factors[index] != _NEUTRAL[index]).any()):
            out = steps[index](out, factors[index])
    return _clamp_unit(out)


def _clamp_unit(image: torch.Tensor) -> torch.Tensor:
    """Kornia's clamp to [0, 1] (identity gradient inside), skipped on the CPU when every value is inside
    already: the same values and gradient for one reduction instead of a clamp, a compare and a select (on
    other devices the check would wait for the device, so the clamp runs)."""
    from kornia.augmentation._2d.intensity.base import _clamp_unit_range

    if image.device.type == "cpu" and image.numel():
        low, high = image.detach().aminmax()
        if bool(low >= 0) and bool(high <= 1):  # False for NaN: the clamp then runs
            return image
    return _clamp_unit_range(image)


def affine_matrix(params: dict) -> torch.Tensor:
    """(N, 3, 3) float64 pixel matrices of kornia RandomAffine parameters: a shear about the centre (x then y,
    negative tangents), then a rotation by ``-angle`` degrees and a scale about the centre, then the
    translation; kornia's ``get_affine_matrix2d`` in a dozen NumPy operations on (N,) arrays (a few
    microseconds each, where a torch call on 16 numbers costs several)."""
    angle, shear_x, shear_y = (_numpy(params[k]) * (math.pi / 180.0) for k in ("angle", "shear_x", "shear_y"))
    scale, centre, translations = (_numpy(params[k]) for k in ("scale", "center", "translations"))
    cos, sin = np.cos(-angle), np.sin(-angle)
    rotate_scale = np.stack([cos * scale[:, 0], sin * scale[:, 1], -sin * scale[:, 0], cos * scale[:, 1]], 1)
    tan_x, tan_y = np.tan(shear_x), np.tan(shear_y)
    shear = np.stack([np.ones_like(tan_x), -tan_x, -tan_y, 1.0 + tan_x * tan_y], 1)
    linear = rotate_scale.reshape(-1, 2, 2) @ shear.reshape(-1, 2, 2)
    matrix = np.zeros((angle.shape[0], 3, 3))
    matrix[:, :2, :2] = linear
    matrix[:, :2, 2] = centre - (linear @ centre[:, :, None])[:, :, 0] + translations
    matrix[:, 2, 2] = 1.0
    return torch.from_numpy(matrix)


def _numpy(value: torch.Tensor) -> np.ndarray:
    """A (CPU, float64) NumPy copy of a small parameter tensor."""
    return value.detach().to("cpu", torch.float64).numpy()


@functools.lru_cache(maxsize=64)
def _normalizers(height: int, width: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """(3, 3) float64 map from pixel coordinates to grid_sample's [-1, 1] ones (pixel centres, or corners),
    and its inverse: constants of the image size, made once."""
    if align_corners:
        sx, sy, ox, oy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1), -1.0, -1.0
    else:
        sx, sy, ox, oy = 2.0 / width, 2.0 / height, 1.0 / width - 1.0, 1.0 / height - 1.0
    norm = np.array([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]])
    return norm, np.linalg.inv(norm)


@functools.lru_cache(maxsize=64)
def _base_points(height: int, width: int, align_corners: bool, dtype: torch.dtype, device: torch.device
                 ) -> torch.Tensor:
    """(H * W, 3) homogeneous output coordinates: ``affine_grid``'s base grid, made once per size (the
    identity's grid is the base grid exactly, since every product is by 1 or 0)."""
    identity = torch.eye(2, 3, dtype=dtype, device=device).unsqueeze(0)
    base = nn.functional.affine_grid(identity, [1, 1, height, width], align_corners=align_corners)
    return torch.cat([base, torch.ones_like(base[..., :1])], -1).view(height * width, 3)


def warp(image: torch.Tensor, matrix: torch.Tensor | np.ndarray, padding_mode: str = "zeros",
         align_corners: bool = False, affine: bool | None = None) -> torch.Tensor:
    """Warp ``image`` (N, C, H, W) by pixel homographies ``matrix`` (N, 3, 3, source to destination) onto
    its own size, bilinear: kornia's ``warp_affine`` / ``warp_perspective`` as one grid and one
    ``grid_sample``. The grid is the cached base grid times every sample's normalized inverse matrix in one
    2-D product ((H W, 3) @ (3, N rows)): on the CPU a batch of tiny matrix products (``affine_grid``'s
    ``bmm``) costs eight times as much. The matrices are inverted where they are (kornia draws them on the
    CPU), so a GPU run neither launches small kernels nor waits for them."""
    n, _, height, width = image.shape
    norm, norm_inv = _normalizers(height, width, align_corners)
    matrix = matrix if isinstance(matrix, np.ndarray) else _numpy(matrix)
    if affine is None:
        affine = bool((matrix[:, 2, :2] == 0).all())
    theta = torch.from_numpy(norm @ np.linalg.inv(matrix) @ norm_inv).to(image.device, image.dtype)
    points = _base_points(height, width, align_corners, image.dtype, image.device)
    rows = 2 if affine else 3  # an affine map's last row is (0, 0, 1): no division
    mapped = (points @ theta[:, :rows].reshape(n * rows, 3).T).view(height * width, n, rows).transpose(0, 1)
    grid = mapped if affine else mapped[..., :2] / mapped[..., 2:]
    return nn.functional.grid_sample(image, grid.reshape(n, height, width, 2), mode="bilinear",
                                     padding_mode=padding_mode, align_corners=align_corners)


def crop_resize(image: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], padding_mode: str = "border"
                ) -> torch.Tensor | None:
    """Kornia's ``crop_and_resize`` (bilinear, align_corners) of axis-aligned ``boxes`` as one grid and one
    ``grid_sample``; None if a box is not axis-aligned (kornia's path then runs).

    ``image`` is (B, C, H, W) and ``boxes`` (B * k, 4, 2) corners clockwise from top-left, image-major: k crops
    of each image. Kornia solves a homography for every box and builds its grid in a few hundred small torch
    operations (0.56 ms of a 10-ms shapes step at ``cut_min`` 0.5). An axis-aligned box maps output pixel j to
    source pixel ``x0 + j (x1 - x0) / (w - 1)``: a grid NumPy makes in float64 in a few microseconds, element by
    element, so a crop's grid does not depend on how many share the batch. The same cutouts to float32 rounding.
    """
    corners = _numpy(boxes)
    height_out, width_out = size
    aligned = (corners[:, 0, 1] == corners[:, 1, 1]) & (corners[:, 2, 1] == corners[:, 3, 1]) \
        & (corners[:, 0, 0] == corners[:, 3, 0]) & (corners[:, 1, 0] == corners[:, 2, 0])
    if not aligned.all() or min(height_out, width_out) < 2 or corners.shape[0] % image.shape[0]:
        return None
    height, width = image.shape[-2:]
    x0, x1, y0, y1 = corners[:, 0, 0], corners[:, 1, 0], corners[:, 0, 1], corners[:, 2, 1]
    # Source pixel of each output column and row, then grid_sample's align_corners coordinate of it.
    xs = x0[:, None] + (x1 - x0)[:, None] * (np.arange(width_out) / (width_out - 1))
    ys = y0[:, None] + (y1 - y0)[:, None] * (np.arange(height_out) / (height_out - 1))
    grid = np.empty((corners.shape[0], height_out, width_out, 2))
    grid[..., 0] = (xs * (2.0 / max(width - 1, 1)) - 1.0)[:, None, :]
    grid[..., 1] = (ys * (2.0 / max(height - 1, 1)) - 1.0)[:, :, None]
    crops = corners.shape[0] // image.shape[0]
    source = image.expand(crops, -1, -1, -1) if image.shape[0] == 1 else image.repeat_interleave(crops, dim=0)
    return nn.functional.grid_sample(source, torch.from_numpy(grid).to(image.device, image.dtype), mode="bilinear",
                                     padding_mode=padding_mode, align_corners=True)


def _warp_of(aug: nn.Module, params: dict) -> tuple[np.ndarray, str, bool, bool] | None:
    """A bilinear RandomAffine's or RandomPerspective's warp for the whole batch: (N, 3, 3) float64 pixel
    matrices, padding mode, align_corners, whether affine; None for anything else."""
    import kornia.augmentation as K

    if type(aug) not in (K.RandomAffine, K.RandomPerspective):
        return None
    flags = aug.flags
    if flags["resample"].name.lower() != "bilinear" or flags.get("fill_value") is not None:
        return None
    if type(aug) is K.RandomAffine:
        return _numpy(affine_matrix(params)), flags["padding_mode"].name.lower(), flags["align_corners"], True
    points = {k: params[k].double() for k in ("start_points", "end_points")}
    matrix = aug.compute_transformation(points["start_points"], points, flags)  # kornia's 8-point solve
    return _numpy(matrix), "zeros", flags["align_corners"], False


def has_fast_path(aug: nn.Module) -> bool:
    """Whether :func:`apply_augment` replays ``aug`` without its ``forward`` (else it calls ``forward``)."""
    import kornia.augmentation as K

    return type(aug) in (K.RandomAffine, K.RandomPerspective, K.ColorJiggle, K.ColorJitter, K.RandomErasing) \
        and not getattr(aug, "keepdim", False)


def apply_augment(aug: nn.Module, image: torch.Tensor, params: dict) -> torch.Tensor:
    """Apply kornia augmentation ``aug`` with the parameters it drew (``aug.forward_parameters``) to a batch
    (N, C, H, W): the same result as ``aug(image, params=params)``, computed on the gated samples only (or, for
    a module with its own ``apply_batch`` such as :class:`~clipstudio.guide.colour.LinearColourJitter`, by it)."""
    batch = getattr(aug, "apply_batch", None)
    if batch is not None:
        return batch(image, params)
    if not has_fast_path(aug):
        return aug(image, params=params)
    gate = torch.atleast_1d(params["batch_prob"] > 0.5)
    count = image.shape[0]
    if gate.shape[0] != count:  # a batch-wide gate (p_batch) or a foreign layout: kornia's own path
        return aug(image, params=params)
    if not bool(gate.any()):
        return image
    gated = None if bool(gate.all()) else gate.nonzero().squeeze(1)  # where the gate is (the CPU: kornia's draws)
    rows = None if gated is None else gated.to(image.device)
    geometric = _warp_of(aug, params)
    if geometric is not None:  # the matrices of the whole batch (NumPy), then the gated rows of them
        matrix, padding, align_corners, affine = geometric
        if rows is None:
            return warp(image, matrix, padding, align_corners, affine)
        out = warp(image.index_select(0, rows), matrix[gated.cpu().numpy()], padding, align_corners, affine)
        return image.index_copy(0, rows, out)
    if rows is not None:
        image_in = image.index_select(0, rows)
        params = {key: _select(key, value, rows, count) for key, value in params.items()}
    else:
        image_in = image
    out = _apply_all(aug, image_in, params)
    return out if rows is None else image.index_copy(0, rows, out.to(image.dtype))


_PER_BATCH = ("order", "forward_input_shape")  # kornia's per-batch values: the colour steps' order, the shape


def _select(key: str, value, rows: torch.Tensor, count: int):
    """The gated samples' rows of a per-sample parameter; per-batch values as they are."""
    if key in _PER_BATCH or not torch.is_tensor(value) or not value.dim() or value.shape[0] != count:
        return value
    return value.index_select(0, rows.to(value.device))


def _apply_all(aug: nn.Module, image: torch.Tensor, params: dict) -> torch.Tensor:
    """``aug``'s transform of every sample of ``image`` with ``params``."""
    steps = _colour_steps(aug)
    if steps is not None:
        return _apply_colour(aug, steps, image, params)
    if hasattr(aug, "compute_transformation") and not _is_intensity(aug):
        transform = aug.compute_transformation(image, params, aug.flags)
        return aug.apply_transform(image, params, aug.flags, transform=transform)
    return aug.apply_transform(image, params, aug.flags)


def _is_intensity(aug: nn.Module) -> bool:
    from kornia.augmentation import IntensityAugmentationBase2D

    return isinstance(aug, IntensityAugmentationBase2D)


