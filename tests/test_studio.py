"""The guidance loop: determinism by seed, the NaN guard, callbacks, ensembles, image and init prompts."""
import numpy as np
import pytest
import torch

import clipstudio
from clipstudio.errors import ClipstudioError
from clipstudio.images import save_png
from clipstudio.losses import TVLoss


def pixels(result) -> np.ndarray:
    return np.asarray(result.image)


def test_same_seed_same_image(tiny_options):
    a = clipstudio.generate("a red circle", seed=3, **tiny_options)
    b = clipstudio.generate("a red circle", seed=3, **tiny_options)
    c = clipstudio.generate("a red circle", seed=4, **tiny_options)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_result_holds_image_losses_and_settings(tiny_options):
    result = clipstudio.generate("a red circle", tv=0.5, **tiny_options)
    assert result.image.size == (32, 32)
    assert set(result.losses) == {"clip", "tv", "total"}
    assert result.weights == {"clip": 1.0, "tv": 0.5}
    assert result.settings.prompt == "a red circle" and result.settings.tv == 0.5
    assert result.steps_run == 3 and len(result.history) == 3


def test_guidance_lowers_the_clip_loss(tiny_options):
    studio = clipstudio.Studio(clipstudio.make_config("a red circle", **{**tiny_options, "steps": 30, "lr": 0.1}))
    torch.manual_seed(0)
    before = studio.evaluate()["clip"]
    studio.run()
    torch.manual_seed(0)  # the same cutouts for the comparison
    assert studio.evaluate()["clip"] < before


def test_nan_loss_skips_the_step_and_never_reaches_the_output(tiny_options, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = TVLoss.forward

    def sometimes_nan(self, ctx):
        calls["n"] += 1
        value = original(self, ctx)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(TVLoss, "forward", sometimes_nan)
    studio = clipstudio.Studio(clipstudio.make_config("a red circle", tv=1.0, **tiny_options))
    with pytest.warns(UserWarning, match="step 1: loss is not finite; step skipped"):
        infos = [studio.step() for _ in range(3)]
    assert [i.skipped for i in infos] == [False, True, False]
    assert all(torch.isfinite(p).all() for p in studio.generator.parameters())
    assert np.isfinite(np.asarray(studio.image(), dtype=float)).all()


def test_nan_gradient_is_caught(tiny_options, monkeypatch):
    studio = clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options))
    hook = studio.generator.spectrum.register_hook(lambda g: g * float("nan"))
    with pytest.warns(UserWarning, match="gradient is not finite"):
        info = studio.step()
    hook.remove()
    assert info.skipped and torch.isfinite(studio.generator.spectrum).all()


def test_callback_sees_every_step_and_can_stop(tiny_options):
    seen = []
    result = clipstudio.generate("a red circle", callback=lambda s, info: seen.append(info.step) or info.step < 1,
                                 **{**tiny_options, "steps": 5})
    assert seen == [0, 1] and result.steps_run == 2


def test_ensemble_averages_models(tiny_options, tiny_clip):
    result = clipstudio.generate("a red circle", **{**tiny_options, "clip": [tiny_clip, tiny_clip]})
    assert result.weights == {"clip0": 0.5, "clip1": 0.5}


def test_image_prompt_and_init_image_losses(tiny_options, tmp_path):
    path = tmp_path / "init.png"
    save_png(clipstudio.images.tensor_to_pil(torch.rand(1, 3, 20, 20)), path)
    result = clipstudio.generate("", image_prompts=[f"{path}:0.5"], init_image=str(path), anchor=1.0,
                                 perceptual=0.1, perceptual_net="alex:random", **tiny_options)
    assert {"clip", "anchor", "perceptual"} <= set(result.losses)


@pytest.mark.parametrize("bad", [{"steps": -1}, {"size": (0, 0)}, {"clip": ["no-such-model"]},
                                 {"generator": "nope"}, {"augments": ["nope"]}, {"init_image": "/no/such.png"},
                                 {"perceptual": 1.0}, {"lr": float("nan")}, {"bogus_option": 1}])
def test_bad_options_raise_one_line(bad, tiny_options):
    with pytest.raises(ClipstudioError) as info:
        clipstudio.generate("a red circle", **{**tiny_options, **bad})
    assert "\n" not in str(info.value)


def test_resume_after_interruption_gives_the_same_image(tiny_options, tmp_path):
    config = clipstudio.make_config("a red circle", **{**tiny_options, "steps": 6})
    straight = clipstudio.Studio(config).run()
    ckpt = tmp_path / "run.ckpt"
    first = clipstudio.Studio(config)
    first.run(callback=lambda s, info: info.step < 2, checkpoint=ckpt, checkpoint_every=1)  # "power cut" at step 3
    second = clipstudio.Studio(config)
    assert second.resume(ckpt) and second.step_index == 3
    resumed = second.run()
    assert np.array_equal(pixels(straight), pixels(resumed))


def test_resume_refuses_other_settings_and_torn_files(tiny_options, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options)).run(checkpoint=ckpt)
    other = clipstudio.Studio(clipstudio.make_config("a blue circle", **tiny_options))
    with pytest.raises(ClipstudioError, match="other settings"):
        other.resume(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ClipstudioError, match="cannot resume"):
        clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options)).resume(ckpt)
