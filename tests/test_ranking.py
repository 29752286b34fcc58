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


# --------------------------------------------------------------------------- how well a score picks

PASSED = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])


def test_a_score_that_knows_the_check_picks_as_well_as_any_of_n():
    from clipstudio.ranking import best_of_k_rate, within_prompt_auc
    perfect = PASSED.float() + torch.rand(PASSED.shape, generator=torch.Generator().manual_seed(0)) * 0.5
    assert within_prompt_auc(PASSED, perfect) == 1.0
    for k in (1, 2, 4):
        assert best_of_k_rate(PASSED, perfect, k) == PASSED[:, :k].any(dim=1).float().mean().item()


def test_a_reversed_score_picks_a_pass_only_where_every_candidate_passes():
    from clipstudio.ranking import best_of_k_rate, within_prompt_auc
    reversed_ = -PASSED.float()
    assert within_prompt_auc(PASSED, reversed_) == 0.0
    assert best_of_k_rate(PASSED, reversed_, 4) == 0.25          # only the row that passes everywhere


def test_a_blind_score_takes_the_first_candidate_and_scores_half():
    from clipstudio.ranking import best_of_k_rate, within_prompt_auc
    blind = torch.zeros(PASSED.shape)
    assert within_prompt_auc(PASSED, blind) == 0.5
    assert best_of_k_rate(PASSED, blind, 4) == PASSED[:, 0].float().mean().item()


def test_auc_counts_pairs_within_a_prompt_only():
    from clipstudio.ranking import within_prompt_auc
    # Across prompts the failing candidate of row 1 outscores the passing one of row 0; within them it does not.
    passed = torch.tensor([[1, 0], [1, 0]])
    scores = torch.tensor([[0.2, 0.1], [0.9, 0.8]])
    assert within_prompt_auc(passed, scores) == 1.0
    assert within_prompt_auc(torch.tensor([[1, 1], [0, 0]]), scores) is None
