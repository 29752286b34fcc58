"""The batched draw of cutout parameters (issue 15): kornia's distributions, seeded, replayed exactly."""
import pytest
import torch

from clipstudio.config import GenerateConfig
from clipstudio.guide.augment_draw import plan_for
from clipstudio.guide.cutouts import AUGMENTS, Cutouts
from clipstudio.studio import Studio

PLANNED = ("affine", "jitter", "jitter-linear", "classic-affine", "classic-jitter")


def _per_sample_keys(params: dict, count: int) -> list[str]:
    return [k for k, v in params.items() if k not in ("order", "forward_input_shape", "batch_prob")
            and torch.is_tensor(v) and v.dim() and v.shape[0] == count]


@pytest.mark.parametrize("name", PLANNED)
def test_batched_draw_has_kornias_keys_ranges_and_distributions(name):
    """Every quantity stays in the module's configured range and follows the distribution of kornia's own
    draws (the quantiles of 4000 samples agree), and the gate opens with probability p."""
    count = 4000
    torch.manual_seed(0)
    ours = Cutouts(8, cutn=count, augments=[name], batched_draw=True).draw(16, 16).augment[0]
    aug = AUGMENTS[name]()
    theirs = aug.forward_parameters(torch.Size([count, 3, 8, 8]))
    assert ours.keys() == theirs.keys()
    assert abs(float(ours["batch_prob"].mean()) - aug.p) < 0.03
    assert set(ours["batch_prob"].unique().tolist()) <= {0.0, 1.0}
    quantiles = torch.linspace(0, 1, 21)
    for key in _per_sample_keys(theirs, count):
        assert ours[key].shape == theirs[key].shape and ours[key].dtype == theirs[key].dtype, key
        a, b = ours[key].reshape(count, -1), theirs[key].reshape(count, -1)
        low, high = b.min(0).values, b.max(0).values
        slack = 0.02 * (high - low) + 1e-6
        assert ((a >= low - slack) & (a <= high + slack)).all(), key
        gap = (a.quantile(quantiles, dim=0) - b.quantile(quantiles, dim=0)).abs()
        assert (gap <= 0.05 * (high - low) + 1e-6).all(), (key, gap.max())


def test_colour_order_is_a_uniform_random_permutation():
    cutouts = Cutouts(8, cutn=2, augments=["jitter"], batched_draw=True)
    torch.manual_seed(1)
    orders = [tuple(cutouts.draw(16, 16).augment[0]["order"].tolist()) for _ in range(480)]
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
    counts = torch.bincount(torch.tensor([order[0] for order in orders]), minlength=4)
    assert len(set(orders)) == 24 and (counts > 80).all()  # 120 expected for each first step


def test_batched_draw_is_reproducible_from_the_seed():
    cutouts = Cutouts(12, cutn=6, augments=["affine", "jitter", "perspective"], cut_min=0.4, batched_draw=True)
    draws = []
    for _ in range(2):
        torch.manual_seed(11)
        draws.append(cutouts.draw(30, 20))
    a, b = draws
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.noise, b.noise)
    for pa, pb in zip(a.augment, b.augment):
        assert pa.keys() == pb.keys()
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    torch.manual_seed(12)
    other = cutouts.draw(30, 20)
    assert not torch.equal(other.noise, a.noise)


def test_crop_boxes_and_noise_follow_the_settings():
    torch.manual_seed(2)
    cutouts = Cutouts(10, cutn=500, cut_min=0.4, noise=0.2, augments=[], batched_draw=True)
    params = cutouts.draw(40, 60)
    side = params.boxes[:, 1, 0] - params.boxes[:, 0, 0] + 1
    assert (side >= 0.4 * 40 - 1e-4).all() and (side <= 40 + 1e-4).all()
    assert (params.boxes[:, 0] >= 0).all() and (params.boxes[:, 2, 0] <= 59 + 1e-4).all()
    assert (params.boxes[:, 2, 1] <= 39 + 1e-4).all()
    scale = params.noise.flatten(1).std(1)
    assert scale.max() < 0.2 * 1.1 and scale.min() < 0.02  # per-cutout levels spread over U(0, 0.2)


@pytest.mark.parametrize("augments", [["affine", "jitter"], ["affine", "jitter-linear"], list(AUGMENTS)])
def test_batched_cutouts_equal_applying_their_parameters(augments):
    """The fast replay and kornia's own forward give the same cutouts from batched parameters."""
    torch.manual_seed(4)
    image = torch.rand(2, 3, 40, 40)
    fast = Cutouts(24, cutn=8, augments=augments, cut_min=0.6, batched_draw=True)
    slow = Cutouts(24, cutn=8, augments=augments, cut_min=0.6, fast=False)
    slow.load_state_dict(fast.state_dict())
    params = fast.draw(40, 40)
    a = fast.apply(image, params)
    assert torch.equal(a, fast.apply(image, params))
    assert torch.allclose(a, slow.apply(image, params), atol=2e-5)


def test_modules_without_a_plan_draw_through_kornia():
    for name in ("perspective", "erasing", "classic-erasing", "blur"):
        assert plan_for(AUGMENTS[name]()) is None, name
    for name in PLANNED:
        assert plan_for(AUGMENTS[name]()) is not None, name
    torch.manual_seed(0)
    params = Cutouts(8, cutn=3, augments=["affine", "classic-erasing"], batched_draw=True).draw(8, 8).augment
    assert params[1].keys() == AUGMENTS["classic-erasing"]().forward_parameters(torch.Size([3, 3, 8, 8])).keys()


def test_batched_draw_is_a_setting_a_resume_compares(tiny_clip, tmp_path):
    """Batched draws give other cutouts for a seed, so a run state keeps to its draw; the fused optimizer
    only rounds differently, so a run resumes with or without it."""
    base = {"prompt": "a red circle", "clip": [tiny_clip], "width": 32, "height": 32, "steps": 2, "cutn": 2,
            "device": "cpu", "generator": "pixels"}
    studio = Studio(GenerateConfig.from_dict({**base, "batched_draw": True, "fused_optimizer": True}))
    studio.step()
    path = studio.save_checkpoint(tmp_path / "run.pt")
    other = Studio(GenerateConfig.from_dict({**base, "batched_draw": True, "fused_optimizer": False}))
    assert other.resume(path) and other.step_index == 1
    other.step()
    from clipstudio.errors import ClipstudioError

    with pytest.raises(ClipstudioError, match="other settings"):
        Studio(GenerateConfig.from_dict({**base, "batched_draw": False})).resume(path)


def test_a_run_state_from_before_batched_draws_resumes_only_with_kornias_draws(tiny_clip, tmp_path):
    """A state saved before the setting existed drew through kornia: it resumes with ``batched_draw`` off and
    is refused, naming the setting, with it on."""
    base = {"prompt": "a red circle", "clip": [tiny_clip], "width": 32, "height": 32, "steps": 2, "cutn": 2,
            "device": "cpu", "generator": "pixels", "batched_draw": False}
    studio = Studio(GenerateConfig.from_dict(base))
    studio.step()
    state = studio.state_dict()
    del state["settings"]["batched_draw"]
    torch.save(state, tmp_path / "old.pt")
    assert Studio(GenerateConfig.from_dict(base)).resume(tmp_path / "old.pt")
    from clipstudio.errors import ClipstudioError

    with pytest.raises(ClipstudioError, match=r"\(batched_draw differ\)"):
        Studio(GenerateConfig.from_dict({**base, "batched_draw": True})).resume(tmp_path / "old.pt")
