"""Caption grammar of the shapes world: canonical captions round-trip, the rest is rejected."""
from __future__ import annotations

import numpy as np
import pytest

from clipstudio.errors import ClipstudioError
from clipstudio.worlds.shapes.captions import (PREFIXES, CaptionSpec, ObjectSpec, canonical_caption, paraphrases,
                                       parse_caption, random_caption, spec_from_scene)
from clipstudio.worlds.shapes.render import FORMS, sample_scene


def test_the_five_forms_parse_with_free_attributes_left_none():
    assert parse_caption("a red circle on a blue background") == CaptionSpec(
        "blue", (ObjectSpec("red", "circle"),))
    assert parse_caption("a small green square on a white background") == CaptionSpec(
        "white", (ObjectSpec("green", "square", size="small"),))
    assert parse_caption("a black triangle at the top on a yellow background") == CaptionSpec(
        "yellow", (ObjectSpec("black", "triangle", position="top"),))
    assert parse_caption("a red circle to the left of a blue square on a white background") == CaptionSpec(
        "white", (ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), "to the left of")
    spec = parse_caption("  A Purple square above an orange circle on a black background. ".replace("an ", "a "))
    assert spec.relation == "above" and spec.objects[1] == ObjectSpec("orange", "circle")
    assert spec.form == "above"


@pytest.mark.parametrize("text", [
    "a red circle",
    "a red circle on a blue backdrop",
    "a photo of a red circle on a blue background",
    "a magenta circle on a blue background",
    "a red hexagon on a blue background",
    "a medium red circle on a blue background",
    "a red circle at the corner on a blue background",
    "a red circle below a blue square on a white background",
    "a red circle on a red background",
    "a red circle above a red square on a white background",
    "",
])
def test_text_outside_the_canonical_grammar_raises_value_error(text):
    with pytest.raises(ValueError):
        parse_caption(text)
    with pytest.raises(ClipstudioError):  # one-line user-facing error too
        parse_caption(text)


def test_canonical_captions_of_sampled_scenes_round_trip():
    rng = np.random.default_rng(0)
    for i in range(300):
        scene = sample_scene(rng, FORMS[i % 5])
        spec = spec_from_scene(scene)
        assert spec.form == scene.form
        assert parse_caption(canonical_caption(scene)) == spec


def test_paraphrases_keep_the_words_and_use_all_prefixes():
    rng = np.random.default_rng(1)
    for form in FORMS:
        scene = sample_scene(rng, form)
        spec = spec_from_scene(scene)
        texts = paraphrases(spec)
        assert canonical_caption(spec) not in texts and len(set(texts)) == len(texts)
        for pre in PREFIXES:
            assert f"{pre} {canonical_caption(spec)}" in texts
        for t in texts:
            assert spec.background in t
            for o in spec.objects:
                assert o.colour in t and o.shape in t
    sc = sample_scene(rng, "plain", background="green", colours=["red"], shapes=["square"])
    assert "a green background with a red square" in paraphrases(sc)


def test_random_caption_mixes_canonical_and_paraphrase_and_drops_attributes():
    rng = np.random.default_rng(2)
    scene = sample_scene(rng, "sized")
    seen = {random_caption(rng, scene) for _ in range(300)}
    assert canonical_caption(scene) in seen
    assert canonical_caption(spec_from_scene(scene, "plain")) in seen  # size dropped sometimes
    assert len(seen) > 5
