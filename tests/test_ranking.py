"""CLIP ranking and the one image-scoring function, pinned on the tiny seeded random CLIP."""
import pytest
import torch
from PIL import Image

from clipstudio import make_config
from clipstudio.errors import ClipstudioError
from clipstudio.guide.clip import load_clip
from clipstudio.guide.prompts import parse_prompts
from clipstudio.ranking import clip_scores, generate_ranked, rank_images, score_images

COLOURS = ["red", "blue", "white"]


def flat_images() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), c) for c in COLOURS]


def test_clip_scores_of_the_seeded_tiny_model(tiny_clip):
    """Expected scores (``NAME:random`` weights are seeded by the name, so every process gets these)."""
    scores = clip_scores(flat_images(), parse_prompts("a red image"), tiny_clip)
    assert scores == pytest.approx([0.10436, -0.07235, -0.20648], abs=1e-4)
    assert rank_images(flat_images(), "a red image", tiny_clip) == [0, 1, 2]


def test_negative_prompt_flips_the_ranking(tiny_clip):
    images = flat_images()
    assert rank_images(images, "a red image", tiny_clip) == rank_images(images, "a red image:-1", tiny_clip)[::-1]


def test_score_images_is_each_images_cosine_to_its_own_text(tiny_clip):
    texts = [f"a {c} image" for c in COLOURS]
    scores = score_images(flat_images(), texts, tiny_clip)
    assert scores == pytest.approx([0.10436, -0.14820, -0.27776], abs=1e-4)
    guide = load_clip(tiny_clip)  # by hand: flat images need no resizing, so the cosines are exact
    x = torch.stack([torch.tensor(Image.new("RGB", (guide.image_size,) * 2, c).getpixel((0, 0))) for c in COLOURS])
    x = (x.float() / 255).view(3, 3, 1, 1).expand(3, 3, guide.image_size, guide.image_size)
    by_hand = (guide.encode_image(x) * guide.encode_text(texts)).sum(-1)
    assert scores == pytest.approx(by_hand.tolist(), abs=1e-5)
    with pytest.raises(ClipstudioError, match="one text per image"):
        score_images(flat_images(), texts[:2], tiny_clip)


def test_generate_ranked_orders_candidates_by_an_independent_rescoring(tiny_options, tiny_clip):
    ranked = generate_ranked(make_config("a red circle", **{**tiny_options, "candidates": 3}), keep=3)
    assert sorted(result.settings.seed for _, result in ranked) == [0, 1, 2]
    rescored = clip_scores([result.image for _, result in ranked], parse_prompts("a red circle"), tiny_clip)
    assert [score for score, _ in ranked] == pytest.approx(rescored, abs=1e-5)
    assert rescored == sorted(rescored, reverse=True) and rescored[0] > rescored[-1]


def test_bad_counts(tiny_options):
    with pytest.raises(ClipstudioError):
        generate_ranked(make_config("a red circle", **{**tiny_options, "candidates": 2}), keep=3)


def test_generate_with_candidates_returns_the_best_run_with_its_own_settings(tiny_options):
    import clipstudio

    best = clipstudio.generate("a red circle", **{**tiny_options, "candidates": 3})
    assert best.settings.candidates == 1 and best.settings.seed in {0, 1, 2}
    again = clipstudio.generate("a red circle", **{**tiny_options, "seed": best.settings.seed})
    assert list(again.image.getdata()) == list(best.image.getdata())
