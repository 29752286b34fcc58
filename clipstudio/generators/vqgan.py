"""The ``vqgan`` generator: optimize a VQGAN latent and decode it (the VQGAN+CLIP recipe).

Checkpoints are taming-transformers Lightning checkpoints (``.ckpt``) with their config (``.yaml``). The model
is rebuilt from ``taming.modules`` only (Encoder, Decoder, VectorQuantizer2 / GumbelQuantize): ``taming.models``
and ``taming.main`` import pytorch-lightning, which this package does not need.

The trainable parameter is ``z``, a grid of vectors in the codebook's embedding space (the quantizer's input).
``forward`` snaps every vector to its nearest codebook entry with a straight-through gradient, decodes, and
maps [-1, 1] to [0, 1] through :func:`clamp_with_grad`; ``post_step`` keeps ``z`` inside the codebook's
per-dimension range so it cannot drift where no code lives.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
from torch import nn

from .. import weights
from ..checkpoints import checkpoint_state_dict, load_checkpoint
from ..errors import ClipstudioError
from .base import Generator, clamp_with_grad, resize_init
from .latent import fit_output, latent_grid

DEFAULT_MODEL = "vqgan_imagenet_f16_16384"


# --- model description and loading -----------------------------------------------------------------------

@dataclass(frozen=True)
class VQGANConfig:
    """What the YAML says about the model: the Encoder/Decoder config and the codebook."""

    ddconfig: dict[str, Any]
    n_embed: int
    embed_dim: int
    gumbel: bool
    kl_weight: float = 5e-4

    @property
    def factor(self) -> int:
        """Spatial down-sampling of the encoder: one halving per resolution level after the first."""
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


def read_config(path: str | os.PathLike) -> VQGANConfig:
    """Parse a taming model YAML (``model: {target, params}`` or bare ``params``)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ClipstudioError(f"VQGAN config not readable: {path} ({err.strerror or err})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ClipstudioError(f"VQGAN config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    model = doc.get("model", doc) if isinstance(doc, dict) else None
    params = model.get("params", model) if isinstance(model, dict) else None
    if not isinstance(params, dict) or not {"ddconfig", "n_embed", "embed_dim"} <= params.keys():
        raise ClipstudioError(f"VQGAN config {path} lacks model.params with ddconfig, n_embed and embed_dim")
    target = str(model.get("target", ""))
    return VQGANConfig(
        ddconfig=dict(params["ddconfig"]), n_embed=int(params["n_embed"]), embed_dim=int(params["embed_dim"]),
        gumbel="gumbel" in target.lower(), kl_weight=float(params.get("kl_weight", 5e-4)),
    )


class VQGANAutoencoder(nn.Module):
    """The inference half of taming's ``VQModel`` / ``GumbelVQ``, with the same state-dict keys."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        dd = config.ddconfig
        # taming's Decoder prints the latent shape on construction; keep the console for the user.
        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        if config.gumbel:
            self.quantize = GumbelQuantize(dd["z_channels"], config.embed_dim, n_embed=config.n_embed,
                                           kl_weight=config.kl_weight, temp_init=1.0)
        else:
            self.quantize = VectorQuantizer2(config.n_embed, config.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(dd["z_channels"], config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, dd["z_channels"], 1)

    @property
    def codebook(self) -> torch.Tensor:
        """The (n_embed, embed_dim) code vectors."""
        return (self.quantize.embed if self.config.gumbel else self.quantize.embedding).weight

    def encode_to_codes(self, image: torch.Tensor) -> torch.Tensor:
        """[-1, 1] image -> embedding-space latent (pre-quantization for VQ; the chosen codes for Gumbel,
        whose quantizer input lives in logit space, not in the codebook's)."""
        h = self.quant_conv(self.encoder(image))
        if self.config.gumbel:
            indices = self.quantize.proj(h).argmax(dim=1)  # the hard Gumbel choice without the noise
            return self.codebook[indices].permute(0, 3, 1, 2)
        return h

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Embedding-space latent -> image in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))


# The architectures of the released taming models (their model.yaml), so a model can be built with random
# weights, for timing, without any download. The f16 ImageNet models differ only in the codebook size.
_TAMING_F16_DDCONFIG = {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3,
                        "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                        "dropout": 0.0}
KNOWN_ARCHITECTURES: dict[str, VQGANConfig] = {
    "vqgan_imagenet_f16_16384": VQGANConfig(_TAMING_F16_DDCONFIG, n_embed=16384, embed_dim=256, gumbel=False),
    "vqgan_imagenet_f16_1024": VQGANConfig(_TAMING_F16_DDCONFIG, n_embed=1024, embed_dim=256, gumbel=False),
}


def random_vqgan(model: str = DEFAULT_MODEL) -> VQGANAutoencoder:
    """A released architecture with random weights (for timing and tests only), frozen and in eval mode."""
    if model not in KNOWN_ARCHITECTURES:
        raise ClipstudioError(f"no built-in architecture for VQGAN '{model}'; "
                              f"random weights exist for: {', '.join(KNOWN_ARCHITECTURES)}")
    return VQGANAutoencoder(KNOWN_ARCHITECTURES[model]).eval().requires_grad_(False)


def load_checkpoint_state(path: str | os.PathLike, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of a (Lightning) checkpoint, through :func:`clipstudio.checkpoints.load_checkpoint`.

    The released taming ``.ckpt`` files pickle Lightning callbacks and hyper-parameter objects beside the
    ``state_dict``; the restricted unpickler turns those into inert stubs (nothing runs, pytorch-lightning
    need not be installed). ``trust_checkpoint`` (from the command line only) allows a full unpickle instead.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipstudioError(f"VQGAN checkpoint not found: {path}")
    try:
        state = checkpoint_state_dict(load_checkpoint(path, trusted=trust_checkpoint), path)
    except ClipstudioError as err:
        raise ClipstudioError(f"VQGAN {err}") from None
    # Training-only parts (discriminator, LPIPS) live under "loss."; inference does not build them.
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def load_vqgan(checkpoint: str | os.PathLike, config: str | os.PathLike,
               trust_checkpoint: bool = False) -> VQGANAutoencoder:
    """Build the autoencoder from ``config`` and load ``checkpoint`` into it, frozen and in eval mode."""
    cfg = read_config(config)
    state = load_checkpoint_state(checkpoint, trust_checkpoint)
    if not cfg.gumbel and "quantize.embed.weight" in state:  # a Gumbel checkpoint whose yaml lost the target
        cfg = VQGANConfig(cfg.ddconfig, cfg.n_embed, cfg.embed_dim, True, cfg.kl_weight)
    try:
        model = VQGANAutoencoder(cfg)
    except (TypeError, KeyError, ValueError) as err:
        raise ClipstudioError(f"VQGAN config {config} has a bad ddconfig ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ClipstudioError(f"VQGAN checkpoint {checkpoint} does not match config {config} ({detail})") from None
    return model.eval().requires_grad_(False)


def resolve_files(model: str | None, checkpoint: str | None, config: str | None,
                  weights_dir: str | None) -> tuple[Path, Path]:
    """(checkpoint, config) paths from a model name (through :func:`clipstudio.weights.fetch`) or from paths;
    a config left out is looked for beside the checkpoint with a ``.yaml`` suffix."""
    if checkpoint:
        if model:
            raise ClipstudioError("give the VQGAN either model=NAME or checkpoint=PATH, not both")
        ckpt = Path(checkpoint).expanduser()
        cfg = Path(config).expanduser() if config else ckpt.with_suffix(".yaml")
        for path, what in ((ckpt, "checkpoint"), (cfg, "config")):
            if not path.is_file():
                raise ClipstudioError(f"VQGAN {what} not found: {path}")
        return ckpt, cfg
    if config:
        raise ClipstudioError("option config=PATH needs checkpoint=PATH too")
    model = model or DEFAULT_MODEL
    if model not in weights.VQGAN_MODELS:
        raise ClipstudioError(f"unknown VQGAN model '{model}'; choose one of: {', '.join(weights.VQGAN_MODELS)}")
    return weights.fetch(f"{model}.ckpt", weights_dir), weights.fetch(f"{model}.yaml", weights_dir)


# --- the generator ----------------------------------------------------------------------------------------

def vector_quantize(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Nearest codebook vector for every position of ``z`` (N,D,H,W), with a straight-through gradient:
    the forward value is the code, the backward pass treats the snap as the identity."""
    n, d, h, w = z.shape
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, d)
    with torch.no_grad():
        # Chunked so the (positions x codes) distance matrix stays small for big images and codebooks.
        indices = torch.cat([torch.cdist(part, codebook).argmin(dim=1) for part in flat.split(chunk)])
    z_q = codebook[indices].reshape(n, h, w, d).permute(0, 3, 1, 2)
    return z + (z_q - z).detach()


class VQGANGenerator(Generator):
    """VQGAN latents from a taming-transformers checkpoint.

    Options: ``model=NAME`` (one of :data:`clipstudio.weights.VQGAN_MODELS`, fetched through the weights
    module; default ``vqgan_imagenet_f16_16384``) or ``checkpoint=PATH config=PATH``; ``weights_dir`` (where to
    look for named models). ``trusted`` is no option but a runtime argument (``--trust-checkpoint`` of the
    current command line): it allows a full unpickle of the checkpoint, which a setting never can.
    ``random_weights`` (the named model's architecture with random weights, no download: timing and tests only).
    """

    def __init__(self, size: tuple[int, int], init_image: torch.Tensor | None = None, *,
                 model: str | None = None, checkpoint: str | None = None, config: str | None = None,
                 weights_dir: str | None = None, trusted: bool = False, random_weights: bool | str = False,
                 **options: Any):
        super().__init__(size, init_image, **options)
        if str(random_weights).lower() in ("1", "true", "yes"):
            if checkpoint or config:
                raise ClipstudioError("option random_weights=true builds a named model; drop checkpoint/config")
            self.model = random_vqgan(model or DEFAULT_MODEL)
        else:
            ckpt_path, config_path = resolve_files(model, checkpoint, config, weights_dir)
            self.model = load_vqgan(ckpt_path, config_path, trusted is True)
        self.factor = self.model.config.factor
        grid_w, grid_h = latent_grid(self.width, self.height, self.factor)
        codebook = self.model.codebook
        self.register_buffer("z_min", codebook.min(dim=0).values.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("z_max", codebook.max(dim=0).values.view(1, -1, 1, 1), persistent=False)
        if init_image is not None:
            with torch.no_grad():
                image = resize_init(init_image, grid_w * self.factor, grid_h * self.factor)
                z = self.model.encode_to_codes(image * 2 - 1)
        else:
            # Random codes; indexing is the one-hot-times-codebook product without the (positions x codes) matrix.
            codes = torch.randint(codebook.shape[0], (grid_h, grid_w))
            z = codebook[codes].permute(2, 0, 1).unsqueeze(0)
        self.z = nn.Parameter(z.detach().clone())

    @torch.no_grad()
    def set_image(self, image: torch.Tensor) -> bool:
        """Encode ``image`` into ``z`` (as an init image is), clamped to the codebook's range."""
        grid_h, grid_w = self.z.shape[-2:]
        image = resize_init(image.to(self.z.device), grid_w * self.factor, grid_h * self.factor)
        self.z.copy_(self.model.encode_to_codes(image * 2 - 1))
        self.post_step()
        return True

    def forward(self) -> torch.Tensor:
        z_q = vector_quantize(self.z, self.model.codebook)
        image = clamp_with_grad(self.model.decode(z_q).add(1).div(2), 0.0, 1.0)
        return fit_output(image, self.width, self.height)

    @torch.no_grad()
    def post_step(self) -> None:
        """Clamp ``z`` to the codebook's per-dimension min/max."""
        self.z.copy_(torch.maximum(torch.minimum(self.z, self.z_max), self.z_min))

    def train(self, mode: bool = True) -> VQGANGenerator:
        # The frozen autoencoder stays in eval mode (dropout off) whatever the optimizer asks of the module.
        super().train(mode)
        self.model.eval()
        return self
