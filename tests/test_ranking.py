import pytest
from PIL import Image

from clipstudio.errors import ClipstudioError
from clipstudio.guide.prompts import parse_prompts
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
    ranked = generate_ranked("a red circle", candidates=3, keep=2, **tiny_options)
    assert len(ranked) == 2 and ranked[0][0] >= ranked[1][0]


def test_bad_counts(tiny_options):
    with pytest.raises(ClipstudioError):
        generate_ranked("a red circle", candidates=2, keep=3, **tiny_options)
