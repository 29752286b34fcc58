"""The linear colour jitter (issue 15): ColorJiggle's draws as one affine colour map per cutout."""
import itertools
import math

import pytest
import torch

from clipstudio.guide.colour import LinearColourJitter, apply_colour_matrices, clamp_unit, colour_matrices
from clipstudio.guide.cutouts import AUGMENTS

YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
LUMA = YIQ[0]


def _step_maps(b: float, c: float, s: float, h: float) -> list[torch.Tensor]:
    """The four steps as 4x4 homogeneous RGB maps, each written out on its own (kornia's step order)."""
    brightness = torch.eye(4, dtype=torch.float64)
    brightness[:3, 3] = b - 1
    contrast = torch.diag(torch.tensor([c, c, c, 1.0], dtype=torch.float64))
    saturation = torch.eye(4, dtype=torch.float64)
    saturation[:3, :3] = s * torch.eye(3, dtype=torch.float64) + (1 - s) * LUMA.expand(3, 3)
    a = -2 * math.pi * h
    rotation = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
                            dtype=torch.float64)
    hue = torch.eye(4, dtype=torch.float64)
    hue[:3, :3] = torch.linalg.inv(YIQ) @ rotation @ YIQ
    return [brightness, contrast, saturation, hue]


def _params(n: int, order) -> dict:
    torch.manual_seed(0)
    return {"brightness_factor": 0.8 + 0.4 * torch.rand(n), "contrast_factor": 0.8 + 0.4 * torch.rand(n),
            "saturation_factor": 0.5 + torch.rand(n), "hue_factor": 0.2 * torch.rand(n) - 0.1,
            "order": torch.tensor(order), "batch_prob": torch.ones(n)}


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_matrices_compose_the_four_steps_in_the_drawn_order(order):
    params = _params(5, order)
    got = colour_matrices(params)
    for i in range(5):
        steps = _step_maps(*(float(params[f"{k}_factor"][i]) for k in ("brightness", "contrast", "saturation", "hue")))
        want = torch.eye(4, dtype=torch.float64)
        for index in order:
            want = steps[index] @ want
        assert torch.allclose(got[i], want[:3], atol=1e-12), (order, i)


def test_gated_off_and_neutral_samples_are_left_exactly_as_they_are():
    image = torch.rand(4, 3, 9, 7)
    params = _params(4, [3, 1, 0, 2])
    params["batch_prob"] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = AUGMENTS["jitter-linear"]().apply_batch(image, params)
    assert torch.equal(out[1], image[1]) and torch.equal(out[3], image[3])
    assert not torch.allclose(out[0], image[0])
    neutral = {"brightness_factor": torch.ones(4), "contrast_factor": torch.ones(4),
               "saturation_factor": torch.ones(4), "hue_factor": torch.zeros(4), "order": torch.arange(4)}
    assert torch.allclose(apply_colour_matrices(image, colour_matrices(neutral)), image, atol=1e-6)


@pytest.mark.parametrize("step", ["brightness", "contrast"])
def test_brightness_and_contrast_are_kornias(step):
    """The two steps ColorJiggle already does linearly give kornia's values where nothing clamps."""
    import kornia.augmentation as K

    image = 0.3 + 0.4 * torch.rand(6, 3, 8, 8)
    params = {f"{k}_factor": torch.ones(6) for k in ("brightness", "contrast", "saturation")}
    params["hue_factor"] = torch.zeros(6)
    params[f"{step}_factor"] = 0.95 + 0.1 * torch.rand(6)
    params["order"], params["batch_prob"] = torch.randperm(4), torch.ones(6)
    params["forward_input_shape"] = torch.tensor(image.shape)
    want = K.ColorJiggle(0.05, 0.05, 0.05, 0.02, p=1.0)(image, params=params)
    got = LinearColourJitter(0.05, 0.05, 0.05, 0.02, p=1.0)(image, params=params)
    assert torch.allclose(got, want, atol=1e-6)


def test_saturation_keeps_luma_and_zero_saturation_is_grey():
    image = 0.2 + 0.6 * torch.rand(3, 3, 5, 5)
    params = {"brightness_factor": torch.ones(3), "contrast_factor": torch.ones(3),
              "saturation_factor": torch.tensor([0.0, 0.5, 1.5]), "hue_factor": torch.zeros(3),
              "order": torch.arange(4)}
    out = apply_colour_matrices(image, colour_matrices(params)).double()
    luma = torch.einsum("c,nchw->nhw", LUMA, image.double())
    assert torch.allclose(torch.einsum("c,nchw->nhw", LUMA, out[:2]), luma[:2], atol=1e-6)
    assert torch.allclose(out[0], luma[0].expand(3, 5, 5), atol=1e-6)


def test_hue_turns_colours_the_way_kornias_hsv_shift_does():
    import kornia.enhance

    torch.manual_seed(0)
    image = 0.2 + 0.6 * torch.rand(8, 3, 6, 6)
    turns = torch.full((8,), 0.03)
    params = {"brightness_factor": torch.ones(8), "contrast_factor": torch.ones(8),
              "saturation_factor": torch.ones(8), "hue_factor": turns, "order": torch.arange(4)}
    ours = apply_colour_matrices(image, colour_matrices(params)) - image
    theirs = kornia.enhance.adjust_hue(image, turns * 2 * math.pi) - image
    assert torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.5


def test_gradient_of_the_colour_map():
    params = _params(3, [2, 0, 3, 1])
    matrix = colour_matrices(params)
    image = (0.2 + 0.6 * torch.rand(3, 3, 4, 4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: apply_colour_matrices(x, matrix), (image,))


def test_clamp_unit_has_clamps_values_and_gradient():
    """The fast clamp gives torch's clamp values and autograd gradient exactly, the bounds and the float32
    values beside them included (autograd passes the gradient strictly inside (0, 1))."""
    edges = torch.tensor([0.0, -0.0, 1.0, 1e-45, -1e-45, 1 - 6e-8, 1 + 1.2e-7, 3e-38, -0.2, 1.3, 0.5])
    x = torch.cat([edges, torch.randn(3000) * 0.7 + 0.5])
    grad = torch.randn_like(x)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ours, out_theirs = clamp_unit(ours), theirs.clamp(0, 1)
    out_ours.backward(grad), out_theirs.backward(grad)
    assert torch.equal(out_ours, out_theirs) and torch.equal(ours.grad, theirs.grad)
    assert ours.grad[:3].abs().sum() == 0 and ours.grad[-1] == grad[-1]  # no gradient on the bounds themselves
    with torch.no_grad():
        assert torch.equal(clamp_unit(x), x.clamp(0, 1))
