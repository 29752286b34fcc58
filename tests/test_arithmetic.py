"""Embedding arithmetic in prompts: ``image:a.png - text:red + text:blue``."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from clipstudio.config import GenerateConfig
from clipstudio.errors import ClipstudioError
from clipstudio.guide.clip import load_clip
from clipstudio.guide.prompts import negative_prompt, parse_prompt, parse_prompts
from clipstudio.guide.targets import combination_embedding, target_embeddings
from clipstudio.images import save_png, tensor_to_pil
from clipstudio.studio import Studio
from generator_fixtures import disc_image


def test_combinations_parse_into_signed_terms():
    prompt = parse_prompt("image:a.png - image:b.png + text:a red hat:0.5")
    assert prompt.terms == ((1.0, "a.png", True), (-1.0, "b.png", True), (1.0, "a red hat", False))
    assert prompt.weight == 0.5 and prompt.text == "image:a.png - image:b.png + text:a red hat"
    assert parse_prompt("-text:red + text:blue").terms == ((-1.0, "red", False), (1.0, "blue", False))
    # Plain prompts are untouched, dashes inside them included.
    assert parse_prompt("a black-and-white cat - photo:2").terms == ()
    assert negative_prompt("text:a + text:b").terms == ((1.0, "a", False), (1.0, "b", False))
    with pytest.raises(ClipstudioError, match="empty text term"):
        parse_prompt("text:a + text: ")


@pytest.fixture
def disc_png(tmp_path):
    path = tmp_path / "disc.png"
    save_png(tensor_to_pil(disc_image(48)), path)
    return str(path)


def test_adding_and_subtracting_the_same_term_changes_nothing(tiny_clip, disc_png):
    guide = load_clip(tiny_clip)
    plain = guide.encode_text(["a cat"])[0]
    for spec in (f"text:a cat + image:{disc_png} - image:{disc_png}", "text:a cat - text:a dog + text:a dog"):
        assert torch.allclose(combination_embedding(parse_prompt(spec), guide), plain, atol=1e-5)
    with pytest.raises(ClipstudioError, match="cancel out"):
        combination_embedding(parse_prompt("text:a cat - text:a cat"), guide)


def test_a_studio_aims_at_the_combination(tiny_clip, disc_png):
    prompt = f"image:{disc_png} - text:orange + text:blue"
    config = GenerateConfig(prompt=prompt + " | a cat", clip=[tiny_clip], width=32, height=32, cutn=2, steps=1)
    studio = Studio(config)
    guide = studio.guides[0]
    expected = target_embeddings(parse_prompts(config.prompt), guide)
    assert torch.allclose(studio.losses["clip"].targets, expected)
    assert studio.run().steps_run == 1


def test_in_the_shapes_world_red_circle_minus_red_plus_blue_is_a_blue_circle(tmp_path):
    from clipstudio.worlds.shapes.render import COLOURS, Scene, ShapeObject, render

    guide = load_clip("shapes-guide")
    for background in ("black", "green"):
        image = render(Scene(background=background, objects=(ShapeObject("circle", "red", 0.5, 0.5, 0.5),)), 64)
        path = tmp_path / f"red-circle-on-{background}.png"
        Image.fromarray(image).save(path)
        target = combination_embedding(parse_prompt(f"image:{path} - text:red + text:blue"), guide)
        colours = [c for c in COLOURS if c != background]
        similarity = guide.encode_text([f"a {c} circle" for c in colours]) @ target
        assert colours[int(similarity.argmax())] == "blue", dict(zip(colours, similarity.tolist()))
