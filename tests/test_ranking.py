import pytest
from PIL import Image

from clipstudio.errors import ClipstudioError
from clipstudio.guide.prompts import parse_prompts
from clipstudio import make_config
from clipstudio.ranking import clip_scores, generate_ranked, rank_images


def test_ranking_orders_by_score(tiny_clip):
    images = [Image.new("RGB", (32, 32), c) for c in ["red", "blue", "white"]]
    scores = clip_scores(images, parse_prompts("a red image"), tiny_clip)
    order = rank_images(images, "a red image", tiny_clip)
    assert [scores[i] for i in order] == sorted(scores, reverse=True)


def test_negative_prompt_flips_the_ranking(tiny_clip):
    images = [Image.new("RGB", (32, 32), c) for c in ["red", "blue", "white"]]
    assert rank_images(images, "a red image", tiny_clip) == rank_images(images, "a red image:-1", tiny_clip)[::-1]


def test_generate_ranked_returns_best_first(tiny_options):
    ranked = generate_ranked(make_config("a red circle", **{**tiny_options, "candidates": 3}), keep=2)
    assert len(ranked) == 2 and ranked[0][0] >= ranked[1][0]


def test_bad_counts(tiny_options):
    with pytest.raises(ClipstudioError):
        generate_ranked(make_config("a red circle", **{**tiny_options, "candidates": 2}), keep=3)


def test_generate_with_candidates_returns_the_best_run_with_its_own_settings(tiny_options):
    import clipstudio

    best = clipstudio.generate("a red circle", **{**tiny_options, "candidates": 3})
    assert best.settings.candidates == 1 and best.settings.seed in {0, 1, 2}
    again = clipstudio.generate("a red circle", **{**tiny_options, "seed": best.settings.seed})
    assert list(again.image.getdata()) == list(best.image.getdata())
