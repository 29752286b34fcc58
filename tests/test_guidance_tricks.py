"""The guidance tricks of the lineage (issue 12), each off by default: gradient normalization, an EMA of the
generator's parameters, a decaying L2 on the latents. On a tiny seeded random CLIP."""
import numpy as np
import pytest
import torch
import yaml

import clipstudio
from clipstudio.config import GenerateConfig
from clipstudio.errors import ClipstudioError
from clipstudio.recipes import dump_recipe
from clipstudio.schedules import ema_decay

TRICKS = {"grad_norm": True, "ema": 0.5, "latent_l2": 2.0}


def _studio(tiny_options, **changes) -> clipstudio.Studio:
    return clipstudio.Studio(clipstudio.make_config("a red circle", **{**tiny_options, **changes}))


def _params(studio) -> list[torch.Tensor]:
    return [p.detach().clone() for p in studio.optimizer_params()]


def test_tricks_are_off_by_default_and_leave_the_output_alone(tiny_options):
    config = GenerateConfig()
    assert (config.grad_norm, config.ema, config.latent_l2) == (False, 0.0, 0.0)
    plain = clipstudio.generate("a red circle", seed=3, **tiny_options)
    spelled = clipstudio.generate("a red circle", seed=3, grad_norm=False, ema=0.0, latent_l2=0.0,
                                  latent_l2_schedule="cosine", **tiny_options)
    assert np.array_equal(np.asarray(plain.image), np.asarray(spelled.image))
    assert set(plain.losses) == {"clip", "total"}


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_each_trick_changes_the_image(trick, tiny_options):
    plain = clipstudio.generate("a red circle", seed=3, **tiny_options)
    tricked = clipstudio.generate("a red circle", seed=3, **{trick: TRICKS[trick]}, **tiny_options)
    assert not np.array_equal(np.asarray(plain.image), np.asarray(tricked.image))


def test_grad_norm_gives_each_parameter_a_unit_gradient(tiny_options):
    studio = _studio(tiny_options, grad_norm=True)
    studio.step()  # the gradient stays on the parameters until the next step zeroes it
    norms = [float(p.grad.norm()) for p in studio.optimizer_params()]
    assert norms and all(n == pytest.approx(1.0, rel=1e-5) for n in norms)
    plain = _studio(tiny_options)
    plain.step()
    assert all(float(p.grad.norm()) != pytest.approx(1.0, rel=1e-3) for p in plain.optimizer_params())


def test_ema_follows_the_warmed_up_average_and_renders_the_output(tiny_options):
    studio = _studio(tiny_options, ema=0.9, steps=4)
    expected = _params(studio)
    for updates in range(3):
        studio.step()
        decay = ema_decay(0.9, updates)
        expected = [decay * e + (1 - decay) * p for e, p in zip(expected, _params(studio))]
    assert all(torch.allclose(e, a, atol=1e-6) for e, a in zip(expected, studio.ema))
    raw = studio.generator().detach()
    averaged = studio.image_tensor()
    assert not torch.equal(raw, averaged)
    assert torch.equal(studio.generator().detach(), raw)  # rendering the average puts the parameters back
    with studio.averaged():
        assert torch.equal(studio.generator().detach(), averaged)


def test_ema_decay_warms_up_to_its_setting():
    assert ema_decay(0.99, 0) == pytest.approx(0.1)
    assert ema_decay(0.99, 10_000) == 0.99
    assert ema_decay(0.5, 3) == pytest.approx(4 / 13) and ema_decay(0.5, 20) == 0.5


def test_resume_with_ema_is_exact(tiny_options, tmp_path):
    config = clipstudio.make_config("a red circle", **{**tiny_options, "steps": 6, "ema": 0.8})
    straight = clipstudio.Studio(config).run()
    ckpt = tmp_path / "run.ckpt"
    first = clipstudio.Studio(config)
    first.run(callback=lambda s, info: info.step < 2, checkpoint=ckpt, checkpoint_every=1)
    second = clipstudio.Studio(config)
    assert second.resume(ckpt) and second.step_index == 3 and second.ema_updates == 3
    resumed = second.run()
    assert np.array_equal(np.asarray(straight.image), np.asarray(resumed.image))


def test_resume_refuses_a_state_without_the_ema(tiny_options, tmp_path):
    studio = _studio(tiny_options, ema=0.8)
    studio.step()
    state = studio.state_dict()
    del state["ema"]
    with pytest.raises(ClipstudioError, match="parameter EMA") as info:
        _studio(tiny_options, ema=0.8).load_state_dict(state)
    assert "\n" not in str(info.value)


def test_a_state_saved_before_the_tricks_existed_still_resumes(tiny_options):
    studio = _studio(tiny_options)
    studio.step()
    state = studio.state_dict()
    for name in ("grad_norm", "ema", "latent_l2", "latent_l2_schedule"):
        del state["settings"][name]
    fresh = _studio(tiny_options)
    fresh.load_state_dict(state)
    assert fresh.step_index == 1


def test_latent_l2_is_the_mean_square_of_the_latents_with_a_decaying_weight(tiny_options):
    studio = _studio(tiny_options, latent_l2=3.0, steps=4)
    params = _params(studio)
    expected = sum(float((p ** 2).sum()) for p in params) / sum(p.numel() for p in params)
    info = studio.step()
    assert info.losses["latent_l2"] == pytest.approx(expected, rel=1e-5)
    assert info.total == pytest.approx(info.losses["clip"] + 3.0 * expected, rel=1e-5)  # linear: full at step 0
    studio.step_index = 2  # half-way through 4 steps the linear decay has halved the weight
    assert studio._weight("latent_l2") == pytest.approx(1.5)
    constant = _studio(tiny_options, latent_l2=3.0, latent_l2_schedule="constant", steps=4)
    constant.step_index = 3
    assert constant._weight("latent_l2") == 3.0


def test_latent_l2_pulls_the_latents_toward_zero(tiny_options):
    plain = _studio(tiny_options, steps=5)
    pulled = _studio(tiny_options, steps=5, latent_l2=1000.0, latent_l2_schedule="constant")
    plain.run(), pulled.run()
    size = [float(torch.cat([p.detach().flatten() for p in s.optimizer_params()]).norm()) for s in (plain, pulled)]
    assert size[1] < size[0]


def test_latent_l2_pulls_toward_the_init_images_latents(tiny_options, tmp_path):
    from clipstudio.images import save_png, tensor_to_pil

    init = tmp_path / "init.png"
    save_png(tensor_to_pil(torch.rand(1, 3, 32, 32)), init)
    studio = _studio(tiny_options, init_image=str(init), latent_l2=1.0)
    assert all(torch.equal(t, p) for t, p in zip(studio.latent_targets, _params(studio)))
    assert studio.evaluate()["latent_l2"] == 0.0


def test_tricks_round_trip_through_a_recipe():
    config = GenerateConfig(prompt="a red circle", grad_norm=True, ema=0.9, latent_l2=0.5,
                            latent_l2_schedule="cosine")
    diff = config.to_dict()
    assert {"grad_norm", "ema", "latent_l2", "latent_l2_schedule"} <= set(diff)
    assert GenerateConfig.from_dict(yaml.safe_load(dump_recipe(config))) == config


@pytest.mark.parametrize("bad, message", [
    ({"ema": 1.0}, "ema must be between 0 and 0.9999"), ({"ema": -0.1}, "ema must be between"),
    ({"latent_l2": -1.0}, "latent-l2 must be between"), ({"grad_norm": "yes"}, "grad-norm must be true or false"),
    ({"latent_l2_schedule": "exp"}, "unknown latent-l2-schedule 'exp'"), ({"ema": float("nan")}, "finite"),
])
def test_bad_trick_values_are_one_line(bad, message):
    with pytest.raises(ClipstudioError, match=message) as info:
        GenerateConfig(prompt="a red circle", **bad).validate()
    assert "\n" not in str(info.value)


def test_bad_trick_on_the_command_line_is_one_line(capsys, tiny_clip):
    from clipstudio.cli import main

    code = main(["generate", "a red circle", "--clip", tiny_clip, "--ema", "1.5", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "ema" in err


PALETTE = "#dc2828,#f58c1e,#f0dc28,#28aa46,#285adc,#8c3cbe,#f5f5f5,#191919"


def _palette_pixels(**options):
    from clipstudio.generators import build_generator

    torch.manual_seed(0)
    return build_generator("pixels", (16, 16), parametrization="palette", palette=PALETTE, **options)


def test_palette_pixels_mix_the_palette_and_hard_ones_use_only_its_colours():
    from clipstudio.generators.primitives import parse_palette

    colours = parse_palette(PALETTE)
    soft = _palette_pixels()
    soft.spectrum.data.normal_(0, 3)
    weights = soft.palette_logits().movedim(1, -1).softmax(-1)
    assert torch.allclose(soft(), (weights @ colours).movedim(-1, 1), atol=1e-6)
    hard = _palette_pixels(hard="true")
    hard.spectrum.data.copy_(soft.spectrum.data)
    pixels_ = hard().detach().movedim(1, -1).reshape(-1, 3)
    nearest = torch.cdist(pixels_, colours).min(dim=1).values
    assert float(nearest.max()) < 1e-3  # rounding of hard + soft - soft; a level of 8-bit colour is 4e-3
    hard().sum().backward()  # straight-through: the softmax's gradient reaches the logits
    assert hard.spectrum.grad is not None and hard.spectrum.grad.abs().sum() > 0


def test_palette_pixels_take_an_image_as_its_nearest_colours():
    scene = torch.empty(1, 3, 16, 16)
    scene[..., :8] = torch.tensor([220, 40, 40]).view(1, 3, 1, 1) / 255  # red | blue, as the palette has them
    scene[..., 8:] = torch.tensor([40, 90, 220]).view(1, 3, 1, 1) / 255
    generator = _palette_pixels(hard=True)
    assert generator.set_image((scene + 0.05 * torch.randn_like(scene)).clamp(0, 1))
    assert torch.allclose(generator(), scene, atol=1e-3)


@pytest.mark.parametrize("options, message", [
    ({"parametrization": "palette"}, "goes with parametrization=palette"),
    ({"parametrization": "rgb", "palette": PALETTE}, "goes with parametrization=palette"),
    ({"parametrization": "palette", "palette": PALETTE, "hard": "maybe"}, "hard must be true or false"),
])
def test_bad_palette_pixel_options_are_one_line(options, message):
    from clipstudio.generators import build_generator

    with pytest.raises(ClipstudioError, match=message) as info:
        build_generator("pixels", (16, 16), **options)
    assert "\n" not in str(info.value)


def test_reset_ema_starts_the_average_at_a_moved_image(tiny_options):
    studio = _studio(tiny_options, ema=0.9)
    studio.step(), studio.step()
    studio.generator.set_image(torch.rand(1, 3, 32, 32))  # what an animation's move does
    assert not torch.allclose(studio.image_tensor(), studio.generator().detach())
    studio.reset_ema()
    assert studio.ema_updates == 0 and torch.equal(studio.image_tensor(), studio.generator().detach())
