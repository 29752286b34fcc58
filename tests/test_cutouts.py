import pytest
import torch

from clipstudio.errors import ClipstudioError
from clipstudio.guide.cutouts import Cutouts, list_augments


def test_replayed_params_give_identical_cutouts():
    torch.manual_seed(0)
    cut = Cutouts(24, cutn=6, augments=list_augments())
    image = torch.rand(1, 3, 40, 48)
    params = cut.draw(40, 48)
    a, b = cut.apply(image, params), cut.apply(image, params)
    assert a.shape == (6, 3, 24, 24)
    assert torch.equal(a, b)
    assert not torch.equal(a, cut(image))  # fresh parameters give other cutouts


def test_cutouts_are_differentiable_and_in_range():
    cut = Cutouts(16, cutn=3)
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    out = cut(image)
    assert out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_cut_min_one_covers_the_whole_image():
    cut = Cutouts(32, cutn=2, cut_min=1.0, augments=[], noise=0.0)
    image = torch.rand(1, 3, 32, 32)
    assert torch.allclose(cut(image), image.expand(2, -1, -1, -1), atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"augments": ["hflip-nope"]}, {"cutn": 0}, {"cut_min": 0.0}])
def test_bad_cutout_settings(kwargs):
    with pytest.raises(ClipstudioError):
        Cutouts(16, **kwargs)


def test_several_images_get_the_same_cutouts_as_each_alone():
    torch.manual_seed(0)
    for cutn in (3, 4):  # 4 is also the length of some kornia parameters that are not per cutout
        cut = Cutouts(16, cutn=cutn, augments=list_augments())
        images = torch.rand(3, 3, 24, 24)
        params = cut.draw(24, 24)
        together = cut.apply(images, params)
        assert together.shape == (3 * cutn, 3, 16, 16)
        alone = torch.cat([cut.apply(images[i:i + 1], params) for i in range(3)])
        assert torch.allclose(together, alone, atol=1e-5)
