"""Every registered loss: smoke, one value per image, bad input, gradient flow, and one step lowers it."""
import math

import pytest
import torch

from clipstudio.errors import ClipstudioError
from clipstudio.guide.clip import load_clip
from clipstudio.guide.prompts import parse_prompts
from clipstudio.losses import LOSSES, ClipLoss, LossContext, spherical_distance, stop_gradient_below


def make_loss(name: str, tiny_clip: str, tmp_path_factory=None):
    if name == "sds":  # score distillation with a tiny seeded random diffusion model (pixel space, 32 px)
        from diffusion_fixtures import write_tiny_checkpoint

        from clipstudio.worlds.shapes.diffusion_model import load_shapes_backend
        backend = load_shapes_backend(write_tiny_checkpoint(tmp_path_factory.mktemp("sds") / "tiny.pt"))
        loss = LOSSES["sds"](backend=backend)
        loss.set_prompts(parse_prompts("a red circle|a blue square:-0.5"))
        return loss
    if name == "clip":
        return LOSSES["clip"](load_clip(tiny_clip), parse_prompts("a red circle|a blue square:-0.5"))
    if name == "perceptual":
        return LOSSES["perceptual"]("alex:random")  # random backbone: no download in tests
    return LOSSES[name]()


def context(image: torch.Tensor, init: torch.Tensor | None) -> LossContext:
    cutouts = torch.nn.functional.interpolate(image, size=32).expand(2, -1, -1, -1)
    return LossContext(image=image, cutouts=cutouts, init_image=init, step=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_contract(name, tiny_clip, tmp_path_factory):
    torch.manual_seed(0)
    loss = make_loss(name, tiny_clip, tmp_path_factory)
    init = torch.rand(1, 3, 32, 32)
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    torch.manual_seed(1)  # a stochastic loss draws the same noise for each image below
    value = loss(context(image, init))
    assert value.shape == (1,) and torch.isfinite(value).all()
    value.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    # One gradient step on the image lowers the loss.
    with torch.no_grad():
        stepped = (image - 1e-2 * image.grad / image.grad.abs().max()).clamp(0, 1)
        torch.manual_seed(1)
        assert loss(context(stepped, init)) < value
        if loss.stochastic:  # new noise for each image of a batch: only the shape can be compared
            assert loss(context(torch.cat([stepped, image.detach()]), init)).shape == (2,)
            return
        # A batch of images gets one value each, the same as each image alone.
        pair = torch.cat([stepped, image.detach()])
        batched = loss(LossContext(image=pair, cutouts=torch.cat([context(stepped, init).cutouts,
                                                                  context(image.detach(), init).cutouts]),
                                   init_image=init, step=0))
        assert batched.shape == (2,)
        assert torch.allclose(batched, torch.cat([loss(context(stepped, init)), value.detach()]), atol=1e-5)


@pytest.mark.parametrize("name", ["anchor", "perceptual"])
def test_init_image_losses_need_an_init_image(name, tiny_clip):
    with pytest.raises(ClipstudioError, match="init image"):
        make_loss(name, tiny_clip)(context(torch.rand(1, 3, 32, 32), None))


def test_spherical_distance_values():
    a = torch.tensor([[1.0, 0.0]])
    assert spherical_distance(a, a).item() == pytest.approx(0.0)
    # Orthogonal unit vectors are pi/2 apart: 2 * (pi/4)^2.
    assert spherical_distance(a, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2 * (math.pi / 4) ** 2)
    assert spherical_distance(a, -a).item() == pytest.approx(2 * (math.pi / 2) ** 2)


def test_stop_turns_the_gradient_off_below_the_threshold():
    d = torch.tensor([0.2, 0.9], requires_grad=True)
    out = stop_gradient_below(d, 0.5)
    assert torch.equal(out, d)
    out.sum().backward()
    assert d.grad.tolist() == [0.0, 1.0]


def test_negative_prompt_pushes_away(tiny_clip):
    guide = load_clip(tiny_clip)
    pos = ClipLoss(guide, parse_prompts("a red circle"))
    neg = ClipLoss(guide, parse_prompts("a red circle:-1"))
    ctx = context(torch.rand(1, 3, 32, 32), None)
    assert neg(ctx).item() == pytest.approx(-pos(ctx).item(), rel=1e-5)


def test_lpips_offline_says_which_file_to_place(monkeypatch):
    import urllib.error

    import lpips

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(lpips, "LPIPS", offline)
    with pytest.raises(ClipstudioError, match="alexnet-owt-7be5be79.pth") as info:
        LOSSES["perceptual"]("alex")
    assert "\n" not in str(info.value)
