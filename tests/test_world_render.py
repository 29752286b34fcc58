"""The shapes-world renderer honours SHAPES_WORLD.md: palette, geometry, sampling rules."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from clipstudio.errors import ClipstudioError
from clipstudio.worlds.shapes.render import (COLOURS, FORMS, JITTER, PALETTE, POSITIONS, SIZE_BANDS, TRIANGLE_HEIGHT,
                                     Scene, ShapeObject, boxes_overlap, render, render_batch, sample_scene,
                                     validate_scene)

SHARED = Path(os.environ.get("CLIPSTUDIO_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SPEC = SHARED / "SHAPES_WORLD.md"


def _spec_palette() -> dict[str, tuple[int, int, int]]:
    rows = re.findall(r"^\|\s*([a-z]+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", SPEC.read_text(), re.M)
    return {n: (int(r), int(g), int(b)) for n, r, g, b in rows}


@pytest.mark.skipif(not SPEC.exists(), reason="shared spec folder not present")
def test_palette_matches_the_spec_table():
    assert _spec_palette() == PALETTE


def _mask(img: np.ndarray, colour: str) -> np.ndarray:
    return (img == np.array(PALETTE[colour], np.uint8)).all(-1)


@pytest.mark.parametrize("shape,fill", [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)])
def test_shape_geometry_fill_ratio_size_and_centre(shape, fill):
    size_px, frac, cx, cy = 256, 0.5, 0.45, 0.55
    img = render(Scene("blue", (ShapeObject(shape, "red", frac, cx, cy),)), size_px)
    # any pixel not exactly background belongs to the shape (antialiased edge included)
    m = ~_mask(img, "blue")
    ys, xs = np.nonzero(m)
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    exp_h = frac * (TRIANGLE_HEIGHT if shape == "triangle" else 1.0)
    assert abs(w - frac * size_px) <= 1.5
    assert abs(h - exp_h * size_px) <= 1.5
    assert abs((xs.min() + xs.max() + 1) / 2 / size_px - cx) <= 1.0 / size_px
    assert abs((ys.min() + ys.max() + 1) / 2 / size_px - cy) <= 1.0 / size_px
    # coverage-weighted area over the box's ideal area gives the fill ratio
    red, blue = np.array(PALETTE["red"], float), np.array(PALETTE["blue"], float)
    alpha = ((img.astype(float) - blue) @ (red - blue)) / ((red - blue) @ (red - blue))
    area = alpha.clip(0, 1).sum() / (frac * size_px * exp_h * size_px)
    assert area == pytest.approx(fill, abs=0.01)


def test_triangle_points_up():
    img = render(Scene("white", (ShapeObject("triangle", "black", 0.5, 0.5, 0.5),)), 128)
    m = _mask(img, "black")
    rows = m.sum(1)
    ys = np.nonzero(rows)[0]
    assert rows[ys[0]] < rows[ys[-1]] / 5  # narrow at the top, wide at the base


@pytest.mark.parametrize("size", [32, 48, 64, 100, 128, 256])
def test_interior_colours_exact_at_every_size(size):
    rng = np.random.default_rng(size)
    for form in FORMS:
        scene = sample_scene(rng, form)
        img = render(scene, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        # the background is exact everywhere but near the objects; each object's centre is exact
        assert tuple(img[0, 0]) in {PALETTE[scene.background]} | {PALETTE[o.colour] for o in scene.objects}
        for ob in scene.objects:
            # the triangle's box centre is inside it; sample a pixel at the mass centre to be safe
            yy = ob.y + (ob.size * TRIANGLE_HEIGHT / 6 if ob.shape == "triangle" else 0)
            px = img[int(yy * size), int(ob.x * size)]
            assert tuple(px) == PALETTE[ob.colour]
        # only the palette colours of the scene and edge blends occur; the majority is exact
        exact = sum(_mask(img, c).sum() for c in {scene.background, *(o.colour for o in scene.objects)})
        assert exact / size**2 > 0.9


def test_sample_scene_rules_hold_for_many_scenes():
    rng = np.random.default_rng(7)
    for i in range(1500):
        form = FORMS[i % len(FORMS)]
        sc = sample_scene(rng, form)
        validate_scene(sc)
        assert sc.form == form
        cols = [o.colour for o in sc.objects]
        assert sc.background not in cols and len(set(cols)) == len(cols)
        for o in sc.objects:
            x0, y0, x1, y1 = o.bbox()
            assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1
            assert 0.22 <= o.size <= 0.62
        if form == "sized":
            lo, hi = SIZE_BANDS[sc.objects[0].size_label]
            assert lo <= sc.objects[0].size <= hi
        if form == "positioned":
            ax, ay = POSITIONS[sc.objects[0].position_label]
            assert abs(sc.objects[0].x - ax) <= JITTER + 1e-9 and abs(sc.objects[0].y - ay) <= JITTER + 1e-9
        if len(sc.objects) == 2:
            a, b = sc.objects
            assert not boxes_overlap(a.bbox(), b.bbox(), 0.0)
            if form == "left_of":
                assert a.x < b.x and abs(b.x - a.x) > abs(b.y - a.y)
            else:
                assert a.y < b.y and abs(b.y - a.y) > abs(b.x - a.x)


def test_both_size_bands_and_all_positions_occur():
    rng = np.random.default_rng(3)
    sized = {sample_scene(rng, "sized").objects[0].size_label for _ in range(50)}
    placed = {sample_scene(rng, "positioned").objects[0].position_label for _ in range(100)}
    assert sized == set(SIZE_BANDS) and placed == set(POSITIONS)


def test_sample_scene_honours_fixed_attributes():
    rng = np.random.default_rng(0)
    sc = sample_scene(rng, "above", background="white", colours=["red", "blue"], shapes=["circle", "square"])
    assert sc.background == "white" and [o.colour for o in sc.objects] == ["red", "blue"]
    assert [o.shape for o in sc.objects] == ["circle", "square"]
    sc = sample_scene(rng, "sized", size="large", position=None)
    assert 0.5 <= sc.objects[0].size <= 0.62


def test_same_seed_same_scene_and_bad_input_raises():
    a = sample_scene(np.random.default_rng(42))
    b = sample_scene(np.random.default_rng(42))
    assert a == b
    with pytest.raises(ClipstudioError):
        sample_scene(np.random.default_rng(0), "nonsense")
    with pytest.raises(ClipstudioError):
        validate_scene(Scene("red", (ShapeObject("circle", "red", 0.3, 0.5, 0.5),)))
    with pytest.raises(ClipstudioError):
        validate_scene(Scene("red", (ShapeObject("circle", "blue", 0.6, 0.1, 0.5),)))
    with pytest.raises(ClipstudioError):
        validate_scene(Scene("red", (ShapeObject("circle", "blue", 0.3, 0.4, 0.5),
                                     ShapeObject("square", "green", 0.3, 0.5, 0.5))))
    with pytest.raises(ClipstudioError):
        sample_scene(np.random.default_rng(0), "positioned", position="middle")
    with pytest.raises(ClipstudioError):
        sample_scene(np.random.default_rng(0), "sized", size="huge")


def test_size_and_position_together_fit_the_canvas():
    rng = np.random.default_rng(5)
    for _ in range(200):
        ob = sample_scene(rng, "positioned", size="large", position="left").objects[0]
        assert 0.5 <= ob.size <= 0.62 and abs(ob.x - 0.27) <= JITTER + 1e-9 and ob.bbox()[0] >= 0


@pytest.mark.parametrize("size", [32, 64])
def test_render_batch_matches_render(size):
    rng = np.random.default_rng(11)
    scenes = [sample_scene(rng) for _ in range(20)]
    batch = render_batch(scenes, size)
    assert tuple(batch.shape) == (20, 3, size, size)
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 1.0
    for sc, t in zip(scenes, batch):
        ref = render(sc, size).astype(np.float32)
        got = t.permute(1, 2, 0).numpy() * 255.0
        assert np.abs(got - ref).max() <= 0.51


def test_all_palette_colours_render_exactly():
    for c in COLOURS:
        bg = "black" if c != "black" else "white"
        img = render(Scene(bg, (ShapeObject("square", c, 0.5, 0.5, 0.5),)), 32)
        assert tuple(img[16, 16]) == PALETTE[c]
        assert tuple(img[1, 1]) == PALETTE[bg]
