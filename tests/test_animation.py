"""Animations: keyframe schedules, motion re-encoded into generators, videos read back, resume by frame."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from clipstudio.animation import AnimationStudio, animate, move_image
from clipstudio.config import GenerateConfig
from clipstudio.errors import ClipstudioError
from clipstudio.generators import build_generator
from clipstudio.images import save_png, tensor_to_pil
from clipstudio.keyframes import AnimateConfig, interpolate, numeric_keyframes, parse_keyframes, prompt_blend
from clipstudio.video import read_video, write_video
from generator_fixtures import TINY_GENERATOR_OPTIONS, disc_image


def test_numeric_keyframes_interpolate_linearly_and_hold_outside():
    keys = numeric_keyframes("0: 1.0 | 30: 1.06 | 40: (1.0)", "zoom")
    assert keys == [(0, 1.0), (30, 1.06), (40, 1.0)]
    assert interpolate(keys, 15) == pytest.approx(1.03)
    assert interpolate(keys, 35) == pytest.approx(1.03)
    assert interpolate(keys, 100) == 1.0 and interpolate(keys, -3) == 1.0
    assert numeric_keyframes("1.02", "zoom") == [(0, 1.02)]


@pytest.mark.parametrize("spec", ["0: 1 | 0: 2", "0: 1 | x: 2", "0: a | 10: b", "0: | 5: 1", "-1: 2 | 3: 1"])
def test_bad_keyframes_are_one_line_errors(spec):
    with pytest.raises(ClipstudioError):
        numeric_keyframes(spec, "zoom")


def test_prompt_blend_moves_weight_linearly_across_the_transition():
    keys = parse_keyframes("0: a red circle | 30: a blue square", "prompts")
    assert prompt_blend(keys, 0) == [("a red circle", 1.0)]
    assert prompt_blend(keys, 15) == [("a red circle", 0.5), ("a blue square", 0.5)]
    assert prompt_blend(keys, 30) == [("a blue square", 1.0)]
    # With a 10-frame transition, the first prompt holds until frame 20, then hands over.
    assert prompt_blend(keys, 15, transition=10) == [("a red circle", 1.0)]
    assert prompt_blend(keys, 25, transition=10) == [("a red circle", 0.5), ("a blue square", 0.5)]


def test_animate_config_round_trips_its_differences():
    config = AnimateConfig(frames=12, zoom="0: 1 | 6: 1.1", first_frame_steps=3)
    assert config.to_dict() == {"frames": 12, "zoom": "0: 1 | 6: 1.1", "first_frame_steps": 3}
    assert AnimateConfig.from_dict(config.to_dict()) == config
    assert AnimateConfig.from_dict({"zoom": 1.05}).zoom == "1.05"
    with pytest.raises(ClipstudioError, match="unknown animate"):
        AnimateConfig.from_dict({"zoom_speed": 1})
    with pytest.raises(ClipstudioError, match="zoom"):
        AnimateConfig(zoom="0: 1 | 5: -1").validate()


def test_move_image_zooms_about_the_centre():
    image = disc_image(64)
    zoomed = move_image(image, zoom=2.0)
    # The centre stays; a point 10 px right of the centre comes from 5 px right of it.
    assert torch.allclose(zoomed[..., 31:33, 31:33], image[..., 31:33, 31:33], atol=0.02)
    assert (zoomed - image).abs().mean() > 0.01
    shifted = move_image(image, pan_x=4.0)
    assert torch.allclose(shifted[..., :, 10:50], image[..., :, 6:46], atol=1e-4)


@pytest.mark.parametrize("name", ["pixels", "vqgan", "latent"])
def test_set_image_puts_an_image_into_the_generator(name, tmp_path):
    options = TINY_GENERATOR_OPTIONS[name](tmp_path) if name in TINY_GENERATOR_OPTIONS else {}
    generator = build_generator(name, (32, 32), **options)
    target = build_generator(name, (32, 32), init_image=disc_image(32), **options)
    assert generator.set_image(disc_image(32)) is True
    # After set_image the generator draws what it draws when started from that image.
    assert torch.allclose(generator(), target(), atol=1e-4)


def test_primitives_say_they_cannot_take_an_image():
    assert build_generator("primitives", (32, 32)).set_image(disc_image(32)) is False


def _still_config(tiny_clip, tmp_path, **changes):
    init = tmp_path / "init.png"
    save_png(tensor_to_pil(disc_image(48)), init)
    settings = {"prompt": "a disc", "clip": [tiny_clip], "width": 48, "height": 48, "cutn": 2, "steps": 0,
                "generator": "pixels", "generator_options": {"parametrization": "rgb"}, "init_image": str(init)}
    return GenerateConfig.from_dict({**settings, **changes})


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_video_frames_differ_by_the_expected_zoom(tiny_clip, tmp_path, suffix):
    config = _still_config(tiny_clip, tmp_path)
    animation = AnimateConfig(frames=4, steps_per_frame=0, zoom="1.1", fps=8, quality=10)
    result = animate(config, animation, tmp_path / f"zoom{suffix}")
    frames = read_video(result.video)
    assert len(frames) == 4 and frames[0].shape == (48, 48, 3)
    for before, after in zip(frames, frames[1:]):
        assert np.abs(before.astype(np.float32) - after.astype(np.float32)).mean() > 2.0  # the frames move
        # ... and of the zooms that could explain the change, 1.1 about the centre explains it best.
        errors = {zoom: _zoom_error(before, after, zoom) for zoom in (1.0, 1.05, 1.1, 1.15, 1.2)}
        assert min(errors, key=errors.get) == 1.1, errors


def _zoom_error(before: np.ndarray, after: np.ndarray, zoom: float) -> float:
    predicted = move_image(torch.from_numpy(before).permute(2, 0, 1)[None].float() / 255, zoom=zoom)
    predicted = predicted[0].permute(1, 2, 0).numpy() * 255
    return float(np.abs(predicted - after.astype(np.float32)).mean())


def test_an_animation_resumes_at_the_frame_it_reached(tiny_clip, tmp_path):
    config = _still_config(tiny_clip, tmp_path, steps=2, init_image=None, generator_options={})
    animation = AnimateConfig(frames=4, steps_per_frame=2, zoom="1.05", rotate="0: 0 | 3: 2",
                              prompts="0: a red disc | 3: a blue disc", cutn="0: 2 | 3: 4")
    whole = animate(config, animation, frames_dir=tmp_path / "whole")
    seen = []

    def stop_after_frame_one(studio, frame, image):
        seen.append((frame, studio.guided_by))
        return frame < 1

    checkpoint = tmp_path / "anim.ckpt"
    first = animate(config, animation, tmp_path / "part.gif", frames_dir=tmp_path / "part", checkpoint=checkpoint,
                    callback=stop_after_frame_one)
    assert first.frames_run == 2 and len(read_video(first.video)) == 2
    assert seen[1][1] == [("a red disc", pytest.approx(2 / 3)), ("a blue disc", pytest.approx(1 / 3))]
    second = animate(config, animation, tmp_path / "part.gif", frames_dir=tmp_path / "part", checkpoint=checkpoint)
    assert second.resumed_at == 2 and second.frames_run == 2
    assert len(read_video(second.video)) == 4
    for a, b in zip(whole.frames, second.frames):
        assert np.array_equal(np.asarray(tensor_to_pil(_load(a))), np.asarray(tensor_to_pil(_load(b))))


def _load(path):
    from clipstudio.images import load_image

    return load_image(path)


def test_a_checkpoint_of_other_animation_settings_is_refused(tiny_clip, tmp_path):
    config = _still_config(tiny_clip, tmp_path, steps=1)
    checkpoint = tmp_path / "anim.ckpt"
    animate(config, AnimateConfig(frames=1), frames_dir=tmp_path / "f", checkpoint=checkpoint)
    with pytest.raises(ClipstudioError, match="other animation settings"):
        AnimationStudio(config, AnimateConfig(frames=2)).resume(checkpoint)


def test_write_video_refuses_other_suffixes_and_keeps_old_files(tmp_path):
    with pytest.raises(ClipstudioError, match=".mp4 or .gif"):
        write_video([np.zeros((8, 8, 3), np.uint8)], tmp_path / "out.avi")
    target = tmp_path / "out.gif"
    target.write_bytes(b"old")
    with pytest.raises(ClipstudioError, match="no frames"):
        write_video([], target)
    assert target.read_bytes() == b"old"


def test_the_python_api_animates_with_a_per_frame_callback(tiny_clip, tmp_path):
    import clipstudio

    frames = []
    result = clipstudio.animate(clip=[tiny_clip], size=(32, 32), cutn=2, steps=1, output=str(tmp_path / "a.gif"),
                                animation={"frames": 3, "steps_per_frame": 1, "pan_x": "2",
                                           "prompts": "0: a red disc | 2: a blue disc"},
                                callback=lambda studio, frame, image: frames.append((frame, image.size)))
    assert frames == [(0, (32, 32)), (1, (32, 32)), (2, (32, 32))]
    assert result.settings.prompt == "a red disc" and len(read_video(result.video)) == 3


def test_a_video_gets_the_permissions_of_any_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_video([np.zeros((8, 8, 3), np.uint8)] * 2, tmp_path / "out.gif")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600: a web server can serve it
