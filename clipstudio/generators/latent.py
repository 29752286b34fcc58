"""The ``latent`` generator: optimize the latent of a diffusion autoencoder and decode it.

Autoencoders (option ``vae=``):

- ``taef2`` (default): TAEF2, the tiny FLUX.2 autoencoder (:mod:`clipstudio.generators.taef2`), 32 channels;
- ``taesd``, ``taesdxl``, ``taesd3``, ``taef1``: the TAESD family as diffusers ``AutoencoderTiny``, from the
  separate ``*_encoder.pth`` / ``*_decoder.pth`` files of madebyollin/taesd (through :mod:`clipstudio.weights`),
  or from a diffusers folder or hub name given as ``vae_path=``;
- ``sd-vae``: Stable Diffusion's ``AutoencoderKL`` (diffusers) from ``vae_path=`` (a local folder, with or without
  a ``vae/`` subfolder, or a hub name; default ``stabilityai/sd-vae-ft-mse``);
- ``tiny-random``: a small randomly initialised ``AutoencoderTiny``, for tests only (no files, no meaning).

Every autoencoder is wrapped as a :class:`LatentCodec` that maps [0, 1] images to latents and back, so the
generator itself knows nothing of each library's value conventions. Tests and programs can inject their own
modules with :meth:`LatentGenerator.from_modules`. diffusers is imported only for the autoencoders that need it.
:func:`latent_grid` and :func:`fit_output` are shared with the ``vqgan`` generator.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import weights
from ..errors import ClipstudioError, missing_extra, option_number
from .base import Generator, LatentCode, clamp_with_grad, resize_init
from .taef2 import FACTOR as TAEF2_FACTOR
from .taef2 import load_into, load_state_dict_file, load_taef2

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, AutoencoderTiny

TINY_FAMILY = {"taesd": 4, "taesdxl": 4, "taesd3": 16, "taef1": 16}  # name -> latent channels
VAES = ("taef2", *TINY_FAMILY, "sd-vae", "tiny-random")
DEFAULT_SD_VAE = "stabilityai/sd-vae-ft-mse"


class LatentCodec(nn.Module):
    """A frozen autoencoder seen as: ``encode`` [0, 1] image -> latent, ``decode`` latent -> image in about
    [0, 1] (not clamped), with a spatial ``factor`` between the two."""

    def __init__(self, encoder: nn.Module | None, decoder: nn.Module, factor: int, latent_channels: int):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.factor, self.latent_channels = int(factor), int(latent_channels)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise ClipstudioError("this latent autoencoder has no encoder, so it cannot start from an init image")
        return self.encoder(image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)


class _TinyCodec(LatentCodec):
    """diffusers ``AutoencoderTiny``: its encoder takes [-1, 1] and its decoder gives [-1, 1]."""

    def __init__(self, vae: AutoencoderTiny):
        super().__init__(vae.encoder, vae.decoder, 2 ** (len(vae.config.encoder_block_out_channels) - 1),
                         vae.config.latent_channels)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image * 2 - 1)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return (self.decoder(latent) + 1) / 2


class _KLCodec(LatentCodec):
    """diffusers ``AutoencoderKL``: latents are the posterior mean in the diffusion model's scaled space.
    (The whole VAE is both ``encoder`` and ``decoder``: its encode/decode methods add the quant convs.)"""

    def __init__(self, vae: AutoencoderKL):
        super().__init__(vae, vae, 2 ** (len(vae.config.block_out_channels) - 1), vae.config.latent_channels)
        self.scale = float(vae.config.scaling_factor or 1.0)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        mean = self.encoder.encode(image * 2 - 1).latent_dist.mean
        return (mean - self.shift) * self.scale

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return (self.decoder.decode(latent / self.scale + self.shift).sample + 1) / 2


# --- building codecs -------------------------------------------------------------------------------------

def _diffusers(class_name: str, vae: str) -> type:
    """A diffusers class, imported only when asked for: the default TAEF2 does not need diffusers, whose
    import alone takes seconds."""
    try:
        return getattr(importlib.import_module("diffusers"), class_name)
    except ModuleNotFoundError as err:
        raise missing_extra(err.name or "diffusers", "diffusion", f"latent generator vae={vae}") from None


def _tiny_from_pth(encoder_path: Path, decoder_path: Path, name: str) -> AutoencoderTiny:
    """AutoencoderTiny from the taesd repo's separate .pth files, sized from the weights.

    The encoder keys ("0.weight", "1.conv.0.weight", ...) are ``EncoderTiny.layers``' keys; the decoder's
    index 0 is a weightless Clamp that diffusers applies in ``forward`` instead, so its keys shift down by one.
    """
    enc = load_state_dict_file(encoder_path, f"{name} encoder")
    dec = load_state_dict_file(decoder_path, f"{name} decoder")
    try:
        width, latent = enc["0.weight"].shape[0], dec["1.weight"].shape[1]
    except KeyError:
        raise ClipstudioError(f"{name}: {encoder_path} / {decoder_path} do not have TAESD's keys") from None
    if latent != TINY_FAMILY[name]:
        raise ClipstudioError(f"{name}: {decoder_path} has {latent} latent channels, {name} has {TINY_FAMILY[name]}")
    vae = _diffusers("AutoencoderTiny", name)(latent_channels=latent, encoder_block_out_channels=(width,) * 4,
                          decoder_block_out_channels=(width,) * 4)
    load_into(vae.encoder.layers, enc, f"{name} encoder")
    shifted = {f"{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in dec.items()}
    load_into(vae.decoder.layers, shifted, f"{name} decoder")
    return vae


def _from_pretrained(cls: type, path: str, offline: bool) -> Any:
    """``cls.from_pretrained`` from a local folder (``vae/`` subfolder allowed) or a hub name, one-line errors."""
    local = Path(path).expanduser()
    # low_cpu_mem_usage=False: that path needs `accelerate`, and without it diffusers prints a warning.
    kwargs: dict[str, Any] = {"low_cpu_mem_usage": False}
    if local.is_dir():
        kwargs["subfolder"] = "vae" if (local / "vae" / "config.json").is_file() else None
        path = str(local)
    elif path.startswith((".", "/", "~")) or path.count("/") != 1:  # a path, not a hub "org/name"
        raise ClipstudioError(f"VAE folder not found: {path}")
    try:
        return cls.from_pretrained(path, local_files_only=offline, **kwargs)
    except Exception as err:  # hub/network/format errors come in many types; the user needs one line
        raise ClipstudioError(
            f"could not load {cls.__name__} from '{path}' ({str(err).splitlines()[0][:200]}); "
            "give vae_path=FOLDER with a diffusers config.json and weights"
        ) from None


def build_codec(vae: str, vae_path: str | None = None, weights_dir: str | None = None) -> LatentCodec:
    """The frozen :class:`LatentCodec` for ``vae`` (see the module docstring)."""
    if vae not in VAES:
        raise ClipstudioError(f"unknown latent autoencoder vae='{vae}'; choose one of: {', '.join(VAES)}")
    if vae_path and vae in ("taef2", "tiny-random"):
        raise ClipstudioError(f"option vae_path applies to sd-vae and {', '.join(TINY_FAMILY)}, not vae={vae}")
    offline = weights.is_offline()
    if vae == "taef2":
        files = weights.fetch_group("taef2", ("encoder", "decoder"), weights_dir)
        encoder, decoder = load_taef2(files["encoder"], files["decoder"])
        codec = LatentCodec(encoder, decoder, TAEF2_FACTOR, decoder[1].in_channels)
    elif vae in TINY_FAMILY and vae_path:
        codec = _TinyCodec(_from_pretrained(_diffusers("AutoencoderTiny", vae), vae_path, offline))
    elif vae in TINY_FAMILY:
        files = weights.fetch_group(vae, ("encoder", "decoder"), weights_dir)
        codec = _TinyCodec(_tiny_from_pth(files["encoder"], files["decoder"], vae))
    elif vae == "sd-vae":
        codec = _KLCodec(_from_pretrained(_diffusers("AutoencoderKL", vae), vae_path or DEFAULT_SD_VAE, offline))
    else:  # tiny-random: test-only
        codec = _TinyCodec(_diffusers("AutoencoderTiny", vae)(
            encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)))
    return codec.eval().requires_grad_(False)


def latent_grid(width: int, height: int, factor: int) -> tuple[int, int]:
    """Latent (w, h) for an output of ``width`` x ``height`` at a down-sampling ``factor``: rounded, at least 1."""
    return max(1, round(width / factor)), max(1, round(height / factor))


def fit_output(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize a decoded image to the requested size when the latent grid did not divide it exactly."""
    if image.shape[-2:] == (height, width):
        return image
    return nn.functional.interpolate(image, size=(height, width), mode="bilinear", align_corners=False)


@torch.no_grad()
def latent_statistics(codec: LatentCodec, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (1,C,1,1) of the latents of a smooth random colour image.

    Latent spaces differ in scale and per-channel offset from one autoencoder to the next, so random starts are
    drawn around what the encoder actually produces rather than around a guessed N(0, 1).
    """
    if codec.encoder is None:
        return torch.zeros(1, codec.latent_channels, 1, 1), torch.ones(1, codec.latent_channels, 1, 1)
    blobs = torch.rand(1, 3, 4, 4)
    image = nn.functional.interpolate(blobs, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    latent = codec.encode(image)
    return latent.mean(dim=(0, 2, 3), keepdim=True), latent.std(dim=(0, 2, 3), keepdim=True).clamp(min=1e-3)


class LatentGenerator(Generator):
    """Latents of a diffusion autoencoder, decoded to the image.

    Options: ``vae`` (one of :data:`VAES`, default ``taef2``), ``vae_path`` (diffusers folder or hub name, for
    ``sd-vae`` and optionally the TAESD family), ``weights_dir`` (where to look for weights files),
    ``init_scale`` (std of the random start, relative to the latents' own per-channel std; default 0.5).
    """

    def __init__(self, size: tuple[int, int], init_image: torch.Tensor | None = None, *, vae: str = "taef2",
                 vae_path: str | None = None, weights_dir: str | None = None, init_scale: float | str = 0.5,
                 codec: LatentCodec | None = None, **options: Any):
        super().__init__(size, init_image, **options)
        self.codec = codec if codec is not None else build_codec(str(vae), vae_path, weights_dir)
        self.space = str(vae) if codec is None else "custom"  # injected modules name no known space
        self.codec.eval().requires_grad_(False)
        factor = self.codec.factor
        grid_w, grid_h = latent_grid(self.width, self.height, factor)
        with torch.no_grad():
            if init_image is not None:
                latent = self.codec.encode(resize_init(init_image, grid_w * factor, grid_h * factor))
            else:
                mean, std = latent_statistics(self.codec)
                scale = option_number(init_scale, "latent option init_scale")
                latent = mean + scale * std * torch.randn(1, self.codec.latent_channels, grid_h, grid_w)
        self.latent = nn.Parameter(latent.detach().clone())

    @classmethod
    def from_modules(cls, size: tuple[int, int], decoder: nn.Module, encoder: nn.Module | None = None, *,
                     factor: int, latent_channels: int, init_image: torch.Tensor | None = None,
                     **options: Any) -> LatentGenerator:
        """A generator around your own modules: ``encoder`` maps [0, 1] images to latents (optional; needed
        for an init image), ``decoder`` maps latents to images in about [0, 1]; ``factor`` is the scale
        between them."""
        return cls(size, init_image, codec=LatentCodec(encoder, decoder, factor, latent_channels), **options)

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> bool:
        """Encode ``image`` into the latent (False when the autoencoder has no encoder)."""
        if self.codec.encoder is None:
            return False
        grid_h, grid_w = self.latent.shape[-2:]
        image = resize_init(image.to(self.latent.device), grid_w * self.codec.factor, grid_h * self.codec.factor)
        self.latent.copy_(self.codec.encode(image))
        return True

    def code(self) -> LatentCode:
        return LatentCode(self.latent, self.space)

    def forward(self) -> torch.Tensor:
        image = clamp_with_grad(self.codec.decode(self.latent), 0.0, 1.0)
        return fit_output(image, self.width, self.height)

    def train(self, mode: bool = True) -> LatentGenerator:
        # The frozen autoencoder stays in eval mode whatever the optimizer asks of the module.
        super().train(mode)
        self.codec.eval()
        return self
