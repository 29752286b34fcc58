"""The ``pixels`` generator: raw RGB, a Fourier-space, colour-decorrelated image (Olah et al. 2017,
"Feature Visualization"; Mordvintsev et al. 2018, "Differentiable Image Parameterizations"), or per-pixel
logits over a limited palette (as pixray's palette option; the world's recipe names the colours), the logits
a 1/f spectrum as the Fourier colours are, so that colour regions come out whole rather than as speckle."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ClipstudioError, option_number
from .base import Generator, clamp_with_grad, resize_init
from .primitives import parse_palette, straight_through_choice

# Square root of the colour correlation of ImageNet, from lucid; columns are scaled to unit max norm.
_COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_CORRELATION_SQRT / _COLOR_CORRELATION_SQRT.norm(dim=0).max()
PARAMETRIZATIONS = ("fourier", "rgb", "palette")
PALETTE_SHARPNESS = 10.0  # logits of an init image: minus this times the squared distance to each colour


def rfft2d_freqs(height: int, width: int) -> torch.Tensor:
    """Spatial frequency magnitude of each bin of an ``rfft2`` of a ``height`` x ``width`` image."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return (fx * fx + fy * fy).sqrt()


def spectrum_scale(height: int, width: int, decay: float) -> torch.Tensor:
    """Per-frequency scale ``1/f^decay``, so equal steps on every bin give natural-image-like 1/f spectra.

    With an orthonormal inverse FFT this matches lucid's ``1/f^decay * sqrt(h*w)`` over an unnormalized one.
    """
    freqs = rfft2d_freqs(height, width).clamp(min=1.0 / max(height, width))
    return freqs.pow(-decay)


def _flag(value: bool | str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ClipstudioError(f"pixels option {name} must be true or false, got {value!r}")
    return str(value).lower() in ("true", "1", "yes")


def _logit(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class PixelGenerator(Generator):
    """Optimizes the image itself, as RGB values or as a scaled spectrum of decorrelated colour channels."""

    def __init__(self, size: tuple[int, int], init_image: torch.Tensor | None = None,
                 parametrization: str = "fourier", decay: float | str = 1.0, init_noise: float | str = 0.01,
                 downscale: int | str = 1, palette: str = "none", hard: bool | str = False, **options):
        super().__init__(size, init_image, **options)
        decay = option_number(decay, "pixels option decay")
        init_noise = option_number(init_noise, "pixels option init_noise")
        downscale = option_number(downscale, "pixels option downscale", cast=int)
        if parametrization not in PARAMETRIZATIONS:
            raise ClipstudioError(
                f"unknown pixels parametrization '{parametrization}'; choose one of: {', '.join(PARAMETRIZATIONS)}"
            )
        self.parametrization = parametrization
        self.hard = _flag(hard, "hard")  # palette: one colour a pixel, straight-through
        colours = parse_palette(palette)
        if (colours is None) != (parametrization != "palette"):
            raise ClipstudioError("pixels option palette='#rrggbb,...' goes with parametrization=palette, and only there")
        # Optimizing a coarser grid and upsampling it removes the pixel-scale textures that fool CLIP.
        self.downscale = max(1, downscale)
        h, w = max(1, round(self.height / self.downscale)), max(1, round(self.width / self.downscale))
        self.grid = (h, w)
        init = resize_init(init_image, w, h) if init_image is not None else None
        if parametrization == "rgb":
            start = init if init is not None else 0.5 + init_noise * torch.randn(1, 3, h, w)
            self.rgb = nn.Parameter(start.clone())
            return
        self.register_buffer("scale", spectrum_scale(h, w, decay), persistent=False)
        channels = 3
        if parametrization == "palette":
            self.register_buffer("palette", colours, persistent=False)
            channels = len(colours)
        if init is None:
            spectrum = init_noise * torch.randn(1, channels, *self.scale.shape, dtype=torch.complex64)
        else:
            spectrum = self._image_to_spectrum(init)
        self.spectrum = nn.Parameter(torch.view_as_real(spectrum).contiguous())

    def _decorrelated_to_rgb(self, t: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,njhw->nihw", COLOR_CORRELATION.to(t), t)

    def _image_to_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Palette logits that favour each pixel's nearest colours (the inverse of the soft mixture, roughly)."""
        distance = ((image[:, None] - self.palette.to(image)[None, :, :, None, None]) ** 2).sum(2)
        return -PALETTE_SHARPNESS * distance

    def _spectrum_to_planes(self) -> torch.Tensor:
        """The spectrum's image planes: decorrelated colours before the sigmoid, or the palette's logits."""
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(spectrum, s=self.grid, norm="ortho") / 4.0

    def palette_logits(self) -> torch.Tensor:
        """The palette's per-pixel logits, (1, colours, h, w) on the optimized grid."""
        return self._spectrum_to_planes()

    def _palette_image(self) -> torch.Tensor:
        """Each pixel a softmax mixture of the palette's colours (or, ``hard``, its likeliest colour forward
        and the softmax's gradient backward)."""
        logits = self.palette_logits().movedim(1, -1)
        weights = straight_through_choice(logits) if self.hard else logits.softmax(-1)
        return (weights @ self.palette).movedim(-1, 1)

    def _image_to_spectrum(self, image: torch.Tensor) -> torch.Tensor:
        # Invert forward(): sigmoid and colour mixing (or the palette's logits), inverse FFT, /4 and 1/f.
        if self.parametrization == "palette":
            planes = self._image_to_logits(image)
        else:
            planes = torch.einsum("ij,njhw->nihw", torch.linalg.inv(COLOR_CORRELATION), _logit(image))
        return torch.fft.rfft2(planes * 4.0, norm="ortho") / self.scale

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> bool:
        """Put ``image`` into the pixels (or their spectrum), resized to the optimized grid."""
        target = self.rgb if self.parametrization == "rgb" else self.spectrum
        height, width = self.grid
        image = resize_init(image.to(target.device), width, height)
        if self.parametrization == "rgb":
            self.rgb.copy_(image)
        else:
            self.spectrum.copy_(torch.view_as_real(self._image_to_spectrum(image)))
        return True

    def forward(self) -> torch.Tensor:
        if self.parametrization == "rgb":
            image = self.rgb
        elif self.parametrization == "palette":
            image = self._palette_image()
        else:
            image = torch.sigmoid(self._decorrelated_to_rgb(self._spectrum_to_planes()))
        if self.grid != (self.height, self.width):
            image = nn.functional.interpolate(image, size=(self.height, self.width), mode="bilinear",
                                              align_corners=False)
        return clamp_with_grad(image)
