"""The fast replay of kornia's augmentations (issue 15): the same parameters, the same cutouts and gradients."""
import math

import pytest
import torch

from clipstudio.guide.cutouts import AUGMENTS, Cutouts, list_augments
from clipstudio.guide.fast_augments import adjust_hue, affine_matrix, apply_augment, crop_resize, has_fast_path, warp


def _value_and_grad(fn, image, weights):
    image = image.detach().clone().requires_grad_(True)
    out = fn(image)
    (grad,) = torch.autograd.grad((out * weights).sum(), image)
    return out.detach(), grad


def _gates(count: int):
    """Mixed, all-on and all-off gates, so every branch of the replay runs."""
    mixed = torch.tensor([i % 3 != 0 for i in range(count)], dtype=torch.float32)
    return [mixed, torch.ones(count), torch.zeros(count)]


@pytest.mark.parametrize("name", list_augments())
def test_fast_replay_gives_kornias_cutouts_and_gradients(name):
    torch.manual_seed(1)
    aug = AUGMENTS[name]()
    image = torch.rand(6, 3, 20, 24)
    weights = torch.rand_like(image)
    for gate in _gates(6):
        params = aug.forward_parameters(image.shape)
        if params["batch_prob"].shape[0] == 6 and not getattr(aug, "same_on_batch", False):
            params["batch_prob"] = gate.to(params["batch_prob"])
        want, want_grad = _value_and_grad(lambda x: aug(x, params=params), image, weights)
        got, got_grad = _value_and_grad(lambda x: apply_augment(aug, x, params), image, weights)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=2e-5), (name, (got - want).abs().max())
        assert torch.allclose(got_grad, want_grad, atol=2e-4), (name, (got_grad - want_grad).abs().max())


def test_the_notebook_and_default_augmentations_take_the_fast_path():
    for name in ("affine", "perspective", "jitter", "erasing", "classic-affine", "classic-perspective",
                 "classic-jitter", "classic-erasing"):
        assert has_fast_path(AUGMENTS[name]()), name


def test_adjust_hue_matches_kornia_on_gray_black_and_tied_pixels():
    import kornia.enhance

    torch.manual_seed(0)
    image = (torch.rand(5, 3, 12, 12) * 1.4 - 0.2).clamp(0, 1)  # many exact 0s and 1s: ties between channels
    image[:, :, 0, 0] = 0.0  # black
    image[:, :, 0, 1] = 0.5  # gray
    turns = torch.tensor([0.0, 0.02, -0.3, 0.49, -0.5])
    weights = torch.rand_like(image)
    want, want_grad = _value_and_grad(lambda x: kornia.enhance.adjust_hue(x, turns * 2 * math.pi), image, weights)
    got, got_grad = _value_and_grad(lambda x: adjust_hue(x, turns), image, weights)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.isfinite(got_grad).all()
    r, g, b = image.unbind(1)
    tied = ((r == g) | (g == b) | (r == b)).unsqueeze(1).expand_as(image)
    assert tied.any() and not tied.all()
    assert torch.allclose(got_grad[~tied], want_grad[~tied], atol=1e-4)  # away from ties: kornia's gradient
    # At tied channels the hue is not differentiable: the gradient is split between them (as amax splits it)
    # where kornia's selection hands it to one; their sum is the same.
    assert torch.allclose(got_grad.sum(1), want_grad.sum(1), atol=1e-4)


def test_affine_matrix_is_kornias():
    import kornia.augmentation as K

    aug = K.RandomAffine(degrees=20, translate=0.1, scale=(0.8, 1.2), shear=(-5, 5, -3, 3), p=1.0)
    image = torch.rand(7, 3, 16, 20)
    params = aug.forward_parameters(image.shape)
    matrix = affine_matrix(params)
    assert matrix.dtype == torch.float64  # solved in float64 whatever the parameters' dtype
    assert torch.allclose(matrix.float(), aug.compute_transformation(image, params, aug.flags), atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_warp_returns_the_image(align_corners):
    image = torch.rand(2, 3, 9, 11)
    out = warp(image, torch.eye(3).expand(2, 3, 3), "zeros", align_corners)
    assert torch.allclose(out, image, atol=1e-5)


@pytest.mark.parametrize("images", [1, 3])
def test_crop_resize_gives_kornias_crops_and_gradients(images):
    from kornia.geometry.transform import crop_and_resize

    torch.manual_seed(5)
    image, crops = torch.rand(images, 3, 30, 40), 4
    side = 30 * (0.2 + 0.8 * torch.rand(images * crops))
    x0, y0 = torch.rand_like(side) * (40 - side), torch.rand_like(side) * (30 - side)
    x1, y1 = x0 + side - 1, y0 + side - 1
    boxes = torch.stack([x0, y0, x1, y0, x1, y1, x0, y1], 1).view(-1, 4, 2)
    weights = torch.rand(images * crops, 3, 12, 16)
    want, want_grad = _value_and_grad(lambda x: crop_and_resize(x.repeat_interleave(crops, 0), boxes, (12, 16),
                                                                padding_mode="border"), image, weights)
    got, got_grad = _value_and_grad(lambda x: crop_resize(x, boxes, (12, 16)), image, weights)
    assert torch.allclose(got, want, atol=5e-5), (got - want).abs().max()
    assert torch.allclose(got_grad, want_grad, atol=5e-4), (got_grad - want_grad).abs().max()


def test_crop_resize_leaves_tilted_boxes_to_kornia():
    boxes = torch.tensor([[[0.0, 0.0], [9.0, 1.0], [8.0, 10.0], [-1.0, 9.0]]])
    assert crop_resize(torch.rand(1, 3, 12, 12), boxes, (8, 8)) is None


def test_fast_and_kornia_cutouts_agree_and_replay_exactly():
    torch.manual_seed(3)
    image = torch.rand(2, 3, 40, 40)
    for augments in (["affine", "jitter"], list(AUGMENTS)):
        fast = Cutouts(24, cutn=8, augments=augments, cut_min=0.6)
        slow = Cutouts(24, cutn=8, augments=augments, cut_min=0.6, fast=False)
        slow.load_state_dict(fast.state_dict())
        params = fast.draw(40, 40)
        a, b = fast.apply(image, params), fast.apply(image, params)
        assert torch.equal(a, b)  # replaying the drawn parameters gives identical cutouts
        assert a.shape == (16, 3, 24, 24)
        assert torch.allclose(a, slow.apply(image, params), atol=2e-5)


def test_fast_cutouts_draw_what_kornia_draws():
    """The fast path only changes how parameters are applied: from one seed, the same draws as kornia's."""
    fast = Cutouts(16, cutn=5, augments=["affine", "jitter"])
    slow = Cutouts(16, cutn=5, augments=["affine", "jitter"], fast=False)
    torch.manual_seed(7)
    a = fast.draw(32, 32)
    torch.manual_seed(7)
    b = slow.draw(32, 32)
    for da, db in zip(a.augment, b.augment):
        assert da.keys() == db.keys()
        assert all(torch.equal(da[k], db[k]) for k in da)


def test_a_checkpoint_from_before_fast_augments_resumes(tiny_clip):
    from clipstudio.config import GenerateConfig
    from clipstudio.studio import Studio

    config = GenerateConfig(prompt="a red circle", clip=[tiny_clip], width=32, height=32, cutn=2, steps=3,
                            generator="pixels")
    studio = Studio(config)
    studio.step()
    state = studio.state_dict()
    del state["settings"]["fast_augments"]  # as a run state written before the setting existed
    other = Studio(GenerateConfig.from_dict({**config.to_full_dict(), "fast_augments": False}))
    other.load_state_dict(state)
    assert other.step_index == 1 and not other.cutouts.fast
