"""TAEF2: the tiny autoencoder for the FLUX.2 latent space (madebyollin/taesd), which diffusers lacks.

Layout (from the published weights; the ``nn.Sequential`` indices are the state-dict keys, so the order of
layers, including the weightless ones, must not change):

- encoder: conv(3,C), Block, conv(stride 2), Block x3, conv(stride 2), Block x3, conv(stride 2),
  pooled Block x3, conv(C, latent); takes images in [0, 1].
- decoder: Clamp, conv(latent, C), ReLU, pooled Block x3, Upsample, conv, Block x3, Upsample, conv, Block x3,
  Upsample, conv, Block, conv(C, 3); gives images in roughly [0, 1].

The released files have C = 64 and 32 latent channels; the loaders read both from the weights, so a smaller
random pair written by a test loads through the same code.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoints import load_checkpoint
from ..errors import ClipstudioError

FACTOR = 8  # spatial down/up-sampling of the encoder/decoder


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    """3x3 convolution with padding 1."""
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of latents to about [-3, 3] at the decoder's input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual conv block; ``pool=True`` adds the TAEF2 branch ``x + pool(x)`` (1x1 convs with a GroupNorm,
    which is what carries image-wide statistics into the block) before the convs."""

    def __init__(self, n: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n, n), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, n))
        self.pool = (
            nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(),
                          nn.Conv2d(4 * n, n, 1, bias=False))
            if pool else None
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def taef2_encoder(latent_channels: int = 32, width: int = 64) -> nn.Sequential:
    """The TAEF2 encoder: [0, 1] images (N,3,H,W) -> latents (N,latent_channels,H/8,W/8)."""
    c = width
    return nn.Sequential(
        conv(3, c), Block(c),
        conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        conv(c, c, stride=2, bias=False), Block(c, True), Block(c, True), Block(c, True),
        conv(c, latent_channels),
    )


def taef2_decoder(latent_channels: int = 32, width: int = 64) -> nn.Sequential:
    """The TAEF2 decoder: latents (N,latent_channels,h,w) -> images (N,3,8h,8w) in roughly [0, 1]."""
    c = width
    return nn.Sequential(
        Clamp(), conv(latent_channels, c), nn.ReLU(),
        Block(c, True), Block(c, True), Block(c, True), nn.Upsample(scale_factor=2), conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), conv(c, c, bias=False),
        Block(c), Block(c), Block(c), nn.Upsample(scale_factor=2), conv(c, c, bias=False),
        Block(c), conv(c, 3),
    )


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` of a plain state dict; a bad file is a one-line error."""
    try:
        state = load_checkpoint(path)
    except FileNotFoundError:
        raise ClipstudioError(f"{what}: file not found: {path}") from None
    except Exception as err:  # torch raises several types for truncated/foreign files
        raise ClipstudioError(f"{what}: {path} is not a readable state dict ({str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipstudioError(f"{what}: {path} is not a plain state dict of tensors")
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``load_state_dict(strict=True)`` with mismatches reported as one line."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ClipstudioError(f"{what}: weights do not fit the architecture ({detail})") from None
    return module


def load_taef2(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike) -> tuple[nn.Module, nn.Module]:
    """Build TAEF2 encoder and decoder sized from the weights and load them (``weights_only=True``)."""
    enc_sd = load_state_dict_file(encoder_path, "TAEF2 encoder")
    dec_sd = load_state_dict_file(decoder_path, "TAEF2 decoder")
    try:
        width, latent = enc_sd["0.weight"].shape[0], enc_sd["14.weight"].shape[0]
    except KeyError:
        raise ClipstudioError(f"TAEF2 encoder: {encoder_path} lacks TAEF2's keys (0.weight, 14.weight)") from None
    encoder = load_into(taef2_encoder(latent, width), enc_sd, "TAEF2 encoder")
    decoder = load_into(taef2_decoder(latent, width), dec_sd, "TAEF2 decoder")
    return encoder, decoder
