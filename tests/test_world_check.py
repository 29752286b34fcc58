"""The colour-and-geometry checker passes rendered truth and fails wrong captions."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from clipstudio.errors import ClipstudioError
from clipstudio.worlds.shapes.captions import CaptionSpec, canonical_caption, spec_from_scene, with_object
from clipstudio.worlds.shapes.check import check_image
from clipstudio.worlds.shapes.render import COLOURS, FORMS, POSITIONS, SHAPES, Scene, ShapeObject, render, sample_scene


@pytest.mark.parametrize("size", [32, 48, 64, 128, 256])
@pytest.mark.parametrize("form", FORMS)
def test_passes_rendered_images_for_every_form_and_size(form, size):
    rng = np.random.default_rng([size, FORMS.index(form)])
    for _ in range(6 if size <= 64 else 2):
        scene = sample_scene(rng, form)
        res = check_image(render(scene, size), canonical_caption(scene))
        assert res.passed, (canonical_caption(scene), scene, res.failures)


def _wrong_specs(spec: CaptionSpec) -> dict[str, CaptionSpec]:
    """One wrong caption per attribute the caption names."""
    used = {o.colour for o in spec.objects}
    out = {
        "background": replace(spec, background=next(c for c in COLOURS if c != spec.background and c not in used)),
        "colour": with_object(spec, 0, colour=next(c for c in COLOURS if c != spec.background and c not in used)),
        "shape": with_object(spec, 0, shape=next(s for s in SHAPES if s != spec.objects[0].shape)),
    }
    ob = spec.objects[0]
    if ob.size is not None:
        out["size"] = with_object(spec, 0, size="large" if ob.size == "small" else "small")
    if ob.position is not None:
        out["position"] = with_object(spec, 0, position=next(p for p in POSITIONS if p != ob.position))
    if spec.relation is not None:
        out["swapped"] = replace(spec, objects=spec.objects[::-1])
        out["relation"] = replace(spec, relation="above" if spec.relation == "to the left of" else "to the left of")
        out["shape2"] = with_object(spec, 1, shape=next(s for s in SHAPES if s != spec.objects[1].shape))
    return out


@pytest.mark.parametrize("size", [32, 64, 160])
@pytest.mark.parametrize("form", FORMS)
def test_fails_wrong_colour_shape_size_position_background_relation(form, size):
    rng = np.random.default_rng([7, size, FORMS.index(form)])
    for _ in range(3):
        scene = sample_scene(rng, form)
        img = render(scene, size)
        for what, wrong in _wrong_specs(spec_from_scene(scene)).items():
            res = check_image(img, canonical_caption(wrong))
            assert not res.passed, (what, canonical_caption(wrong), canonical_caption(scene))
            assert res.failures


def test_fails_extra_object_missing_object_and_noise():
    two = Scene("white", (ShapeObject("circle", "red", 0.3, 0.27, 0.5), ShapeObject("square", "blue", 0.3, 0.73, 0.5)),
                "to the left of", "left_of")
    res = check_image(render(two, 64), "a red circle on a white background")
    assert not res.passed and any("extra" in f for f in res.failures)
    blank = np.full((64, 64, 3), 245, np.uint8)
    res = check_image(blank, "a red circle on a white background")
    assert not res.passed and any("no red object" in f for f in res.failures)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert not check_image(noise, "a red circle on a white background").passed
    # red speckles scattered over the canvas are not one circle
    speck = np.full((64, 64, 3), 245, np.uint8)
    speck[rng.random((64, 64)) < 0.15] = (220, 40, 40)
    assert not check_image(speck, "a red circle on a white background").passed


def test_tolerates_noise_and_colour_drift_like_generated_images():
    rng = np.random.default_rng(1)
    for form in FORMS:
        scene = sample_scene(rng, form)
        img = render(scene, 96).astype(np.float32)
        img = img + rng.normal(0, 8, img.shape) + rng.uniform(-15, 15, 3)
        res = check_image(np.clip(img, 0, 255).astype(np.uint8), canonical_caption(scene))
        assert res.passed, res.failures


def test_accepts_pil_and_reports_details():
    scene = Scene("blue", (ShapeObject("circle", "red", 0.5, 0.5, 0.5, "large"),), None, "sized")
    res = check_image(Image.fromarray(render(scene, 64)), "a large red circle on a blue background")
    assert res.passed and res.details["object1"]["shape"] == "circle"
    assert res.details["background"]["dominant"] == "blue"
    assert abs(res.details["object1"]["width"] - 0.5) < 0.04


def test_bad_input_raises():
    with pytest.raises(ValueError):
        check_image(np.zeros((8, 8, 3), np.uint8), "not a caption")
    with pytest.raises(ClipstudioError):
        check_image(np.zeros((8, 8), np.uint8), "a red circle on a blue background")
