"""Cutouts: random-size square crops resized to CLIP's input, kornia augmentations, small noise.

As in kornia, parameters are drawn apart from being applied: :meth:`Cutouts.draw` returns a
:class:`CutoutParams` that :meth:`Cutouts.apply` replays exactly, so several losses (several CLIP models of
an ensemble, say) see the same cutouts, and a step can be replayed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import CUT_MODES  # a random square crop resized to the guide's input, or the whole image pooled
from ..errors import ClipstudioError
from .augment_draw import draw_augment_params, plan_for, uniform_count
from .colour import clamp_unit
from .fast_augments import apply_augment, crop_resize

# Augmentation registry: name -> factory of a kornia augmentation. Flips are absent on purpose:
# they would swap "left" and "right" in the prompt's meaning.
AUGMENTS: dict[str, Callable[[], nn.Module]] = {}


def _register_kornia_augments() -> None:
    import kornia.augmentation as K

    from .colour import LinearColourJitter

    AUGMENTS.update({
        "affine": lambda: K.RandomAffine(degrees=10, translate=0.05, scale=(0.9, 1.1), p=0.7, padding_mode="border"),
        "perspective": lambda: K.RandomPerspective(distortion_scale=0.2, p=0.5),
        "jitter": lambda: K.ColorJiggle(brightness=0.05, contrast=0.05, saturation=0.05, hue=0.02, p=0.7),
        "erasing": lambda: K.RandomErasing(scale=(0.02, 0.1), ratio=(0.3, 3.3), p=0.5),
        "sharpness": lambda: K.RandomSharpness(sharpness=0.3, p=0.4),
        "blur": lambda: K.RandomGaussianBlur(kernel_size=(3, 3), sigma=(0.1, 1.0), p=0.3),
        "grayscale": lambda: K.RandomGrayscale(p=0.1),
        # jitter's draws as one affine colour map per cutout (luma saturation, YIQ hue): guide/colour.py.
        "jitter-linear": lambda: LinearColourJitter(brightness=0.05, contrast=0.05, saturation=0.05, hue=0.02,
                                                    p=0.7),
        # The classic VQGAN+CLIP notebooks' augmentations (with pooled cutouts; ``bench --preset classic``).
        "classic-affine": lambda: K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros"),
        "classic-perspective": lambda: K.RandomPerspective(0.7, p=0.7),
        "classic-jitter": lambda: K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
        "classic-erasing": lambda: K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True,
                                                   p=0.7),
    })


_register_kornia_augments()
DEFAULT_AUGMENTS = ("affine", "perspective", "jitter", "erasing")
CLASSIC_AUGMENTS = ("classic-affine", "classic-perspective", "classic-jitter", "classic-erasing")


def list_augments() -> list[str]:
    """Names ``--augment`` accepts."""
    return sorted(AUGMENTS)


def build_augments(names: list[str] | tuple[str, ...]) -> list[nn.Module]:
    """Instantiate augmentations by name; an unknown name is a one-line error listing the valid ones."""
    unknown = [n for n in names if n not in AUGMENTS]
    if unknown:
        raise ClipstudioError(f"unknown augment '{unknown[0]}'; choose from: {', '.join(list_augments())}")
    return [AUGMENTS[n]() for n in names]


@dataclass
class CutoutParams:
    """Everything random about one batch of cutouts, so it can be replayed."""

    boxes: torch.Tensor  # (cutn, 4, 2) crop corners in source pixels, clockwise from top-left
    noise: torch.Tensor  # (cutn, 3, size, size) additive noise, already scaled per cutout
    augment: list[dict] = field(default_factory=list)  # kornia params, one dict per augmentation
    same_view: bool = False  # every box is the whole image, so the un-augmented cutouts are all alike

    def tiled(self, copies: int) -> CutoutParams:
        """The same cutouts for ``copies`` images in a row (image-major), e.g. to judge several candidate
        images on identical views."""
        cutn = self.boxes.shape[0]

        def tile(key: str, value):
            if key == "forward_input_shape":  # kornia's record of the batch shape
                return torch.tensor([cutn * copies, *value.tolist()[1:]], dtype=value.dtype)
            if key != "order" and torch.is_tensor(value) and value.dim() and value.shape[0] == cutn:
                return value.repeat(copies, *([1] * (value.dim() - 1)))
            return value  # per-batch values such as ColorJiggle's order of operations

        return CutoutParams(boxes=self.boxes.repeat(copies, 1, 1), noise=self.noise.repeat(copies, 1, 1, 1),
                            augment=[{k: tile(k, v) for k, v in d.items()} for d in self.augment],
                            same_view=self.same_view)


def crop_fractions(cutn: int, cut_pow: float, cut_min: float) -> torch.Tensor:
    """Side of each crop as a fraction of the image's short side: ``cut_min + (1-cut_min) * u**cut_pow``."""
    return cut_min + (1.0 - cut_min) * torch.rand(cutn) ** cut_pow


class Cutouts(nn.Module):
    """Draws and applies ``cutn`` augmented cutouts of an NCHW [0, 1] image at ``size`` x ``size``.

    Cutouts that are all the same view of an image (``mode="pooled"``, or crops with ``cut_min=1`` of a square
    image) are computed once per image and repeated, not once per cutout: only the augmentations differ.
    """

    def __init__(self, size: int, cutn: int = 16, cut_pow: float = 1.0, cut_min: float = 0.5,
                 augments: list[str] | tuple[str, ...] = DEFAULT_AUGMENTS, noise: float = 0.05,
                 mode: str = "crops", fast: bool = True, batched_draw: bool = False):
        super().__init__()
        if cutn < 1:
            raise ClipstudioError(f"cutn must be at least 1, got {cutn}")
        if not 0.0 < cut_min <= 1.0:
            raise ClipstudioError(f"cut_min must be in (0, 1], got {cut_min}")
        if mode not in CUT_MODES:
            raise ClipstudioError(f"unknown cut mode '{mode}'; choose one of: {', '.join(CUT_MODES)}")
        self.size, self.cutn, self.cut_pow, self.cut_min, self.noise = size, cutn, cut_pow, cut_min, noise
        self.mode = mode
        # fast: replay kornia's draws without its per-call machinery (guide/fast_augments.py); the same
        # cutouts to float32 rounding. False: through each kornia module's forward.
        self.fast = fast
        self.augment_names = list(augments)
        self.augments = nn.ModuleList(build_augments(self.augment_names))
        # batched_draw: every uniform number of a batch in one torch.rand (guide/augment_draw.py): kornia's
        # distributions from another random stream. False: each kornia module's own forward_parameters.
        self.batched_draw = batched_draw
        self._plans = [plan_for(aug) for aug in self.augments]

    def draw(self, height: int, width: int) -> CutoutParams:
        """Draw the random parameters of one batch of cutouts for an image of ``height`` x ``width``."""
        shape = torch.Size([self.cutn, 3, self.size, self.size])
        if self.batched_draw:
            uniforms = torch.rand(4 * self.cutn + uniform_count(self._plans, self.cutn))
            crop_u = uniforms[:4 * self.cutn].view(4, self.cutn)
            fractions = self.cut_min + (1.0 - self.cut_min) * crop_u[0] ** self.cut_pow
            x_u, y_u, scale = crop_u[1], crop_u[2], crop_u[3].view(-1, 1, 1, 1) * self.noise
            augment = draw_augment_params(list(self.augments), self._plans, tuple(shape), uniforms[4 * self.cutn:])
        else:
            fractions = crop_fractions(self.cutn, self.cut_pow, self.cut_min)
            x_u, y_u = torch.rand(self.cutn), torch.rand(self.cutn)
            scale = torch.rand(self.cutn, 1, 1, 1) * self.noise
            augment = None
        side = min(height, width) * fractions
        x0, y0 = x_u * (width - side), y_u * (height - side)
        x1, y1 = x0 + side - 1, y0 + side - 1
        boxes = torch.stack([x0, y0, x1, y0, x1, y1, x0, y1], 1).view(-1, 4, 2)
        noise = torch.randn(shape) * scale
        if augment is None:
            augment = [aug.forward_parameters(shape) for aug in self.augments]
        same_view = self.mode == "pooled" or (self.cut_min >= 1.0 and height == width)
        return CutoutParams(boxes=boxes, noise=noise, augment=augment, same_view=same_view)

    def apply(self, image: torch.Tensor, params: CutoutParams) -> torch.Tensor:
        """Cut, augment and add noise to ``image`` (NCHW) with the given parameters (differentiable).

        Every image gets the same ``cutn`` cutouts; the result holds image 0's cutouts, then image 1's...
        Under mixed precision they are still made in float32: a sampling grid in bfloat16 would be a quarter of a
        pixel off at 64 px, and autocast would give its matrix products operands of two dtypes.
        """
        if torch.is_autocast_enabled(image.device.type):
            with torch.autocast(image.device.type, enabled=False):
                return self._cut(image.float(), params)
        return self._cut(image, params)

    def _cut(self, image: torch.Tensor, params: CutoutParams) -> torch.Tensor:
        if image.shape[0] > 1:
            params = params.tiled(image.shape[0])
        cuts = self.views(image, params.boxes, params.same_view)
        for aug, aug_params in zip(self.augments, params.augment):
            cuts = self.augment(aug, cuts, aug_params)
        return self.add_noise(cuts, params.noise)

    def augment(self, aug: nn.Module, cuts: torch.Tensor, aug_params: dict) -> torch.Tensor:
        """One of this module's augmentations applied with the parameters it drew (the fast replay, or kornia's
        ``forward`` when ``fast`` is off)."""
        return apply_augment(aug, cuts, aug_params) if self.fast else aug(cuts, params=aug_params)

    @staticmethod
    def add_noise(cuts: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The drawn noise added, then the cutouts clamped to [0, 1]: the last stage of :meth:`apply`."""
        return clamp_unit(cuts + noise.to(cuts.device))

    def views(self, image: torch.Tensor, boxes: torch.Tensor, same_view: bool) -> torch.Tensor:
        """The un-augmented cutouts of ``image`` (N, 3, H, W) for drawn ``boxes``, image-major:
        (N * cutn, 3, size, size)."""
        from kornia.geometry.transform import crop_and_resize

        size = (self.size, self.size)
        if self.mode == "pooled":  # every cutout is the same pooled image: pool once, repeat
            pooled = (nn.functional.adaptive_avg_pool2d(image, size) + nn.functional.adaptive_max_pool2d(image, size)) / 2
            return pooled.repeat_interleave(self.cutn, dim=0)
        if same_view:  # every crop is the whole (square) image: resize once, repeat. crop_and_resize's warp of
            # that box samples the points of an align_corners bilinear resize, which is one kernel, not a warp.
            once = nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=True)
            return once.repeat_interleave(self.cutn, dim=0)
        crops = crop_resize(image, boxes, size, padding_mode="border") if self.fast else None
        if crops is not None:
            return crops
        batch = image.repeat_interleave(self.cutn, dim=0)
        return crop_and_resize(batch, boxes.to(image.device), size, padding_mode="border")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Draw new parameters and apply them."""
        return self.apply(image, self.draw(image.shape[-2], image.shape[-1]))
