"""Image regularizers: total variation, an MSE anchor to the init image, and LPIPS to the init image."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ClipstudioError
from .base import Loss, LossContext


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels, per image (Rudin, Osher & Fatemi 1992, squared)."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1)


class TVLoss(Loss):
    """Total variation of the image: smooths away high-frequency adversarial texture."""

    def forward(self, ctx: LossContext) -> torch.Tensor:
        return total_variation(ctx.image)


class AnchorLoss(Loss):
    """Mean squared error to the init image: keeps the result close to where it started."""

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if ctx.init_image is None:
            raise ClipstudioError("the anchor loss needs an init image (--init-image)")
        return (ctx.image - ctx.init_image).pow(2).flatten(1).mean(1)


LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def lpips_backbone_path(backbone: str) -> Path:
    """Where torchvision (through torch hub's cache, ``$TORCH_HOME/hub/checkpoints``) keeps an LPIPS backbone."""
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[backbone]


def check_lpips_backbone(backbone: str) -> None:
    """Offline (``CLIPSTUDIO_OFFLINE``/``HF_HUB_OFFLINE``), a backbone missing from torch hub's cache is one line
    naming the file and the folder, before torchvision tries the network."""
    from .. import weights

    path = lpips_backbone_path(backbone)
    if weights.is_offline() and not path.is_file():
        raise ClipstudioError(f"LPIPS backbone '{backbone}' not found offline: put {path.name} in {path.parent}")


def build_lpips(net: str = "alex"):
    """An LPIPS metric (Zhang et al. 2018) from the ``lpips`` package; ``NET:random`` uses a random backbone.

    LPIPS fetches its torchvision backbone on first use; offline that fails, and we say which file to
    put in torch's hub cache.
    """
    try:
        import lpips
    except ImportError:
        raise ClipstudioError("the perceptual loss needs the 'lpips' package: pip install lpips") from None
    backbone, _, tag = net.partition(":")
    if backbone not in LPIPS_BACKBONE_FILES:
        raise ClipstudioError(f"unknown LPIPS net '{backbone}'; choose from: {', '.join(LPIPS_BACKBONE_FILES)}")
    if tag != "random":
        check_lpips_backbone(backbone)
    try:
        return lpips.LPIPS(net=backbone, pnet_rand=(tag == "random"), verbose=False).eval().requires_grad_(False)
    except OSError as err:  # URLError is an OSError: no network, no cached backbone
        path = lpips_backbone_path(backbone)
        raise ClipstudioError(
            f"LPIPS could not fetch its '{backbone}' backbone ({type(err).__name__}); offline, put "
            f"{path.name} in {path.parent}"
        ) from None


class PerceptualLoss(Loss):
    """LPIPS distance to the init image: keeps its structure while CLIP changes the content."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.metric = build_lpips(net)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        if ctx.init_image is None:
            raise ClipstudioError("the perceptual loss needs an init image (--init-image)")
        # LPIPS expects images in [-1, 1].
        init = ctx.init_image.expand_as(ctx.image)
        return self.metric(ctx.image * 2 - 1, init * 2 - 1).flatten()
