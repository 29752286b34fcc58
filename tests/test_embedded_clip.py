"""The shipped shapes-world CLIP checkpoints load through open_clip and keep their stated accuracy."""
from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pytest
import torch

import clipstudio
from clipstudio.guide.clip import load_clip
from clipstudio.worlds.shapes.train_clip import MODEL_CONFIG_DIR, TARGETS
from clipstudio.worlds.shapes.zeroshot import evaluate_model

ASSETS = Path(clipstudio.__file__).parent / "worlds" / "shapes" / "assets"
NAMES = ("shapes-guide", "shapes-eval")
FRESH_SEED = 2024  # not the seed of the recorded figures, not a training seed
N_PER_FORM = 60


def _card(name: str) -> dict:
    return json.loads((ASSETS / f"{name}.json").read_text())


@pytest.fixture(scope="module", params=NAMES)
def loaded(request):
    name = request.param
    open_clip.add_model_config(str(MODEL_CONFIG_DIR))
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(ASSETS / f"{name}.pt"))
    return name, model.eval(), open_clip.get_tokenizer(name), preprocess


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_is_a_small_plain_state_dict(name):
    path = ASSETS / f"{name}.pt"
    assert path.stat().st_size < 20 * 2**20
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    card = _card(name)
    assert card["model"] == name and card["config"] == json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text())
    assert set(card["accuracy"]) == set(TARGETS)


def test_guide_and_eval_are_independent_architectures():
    g = json.loads((MODEL_CONFIG_DIR / "shapes-guide.json").read_text())
    e = json.loads((MODEL_CONFIG_DIR / "shapes-eval.json").read_text())
    # The guide is open_clip's ModifiedResNet (conv stem, attention pooling); the evaluator a timm
    # EfficientNet (inverted residuals, squeeze-excitation, average pooling), at another input size.
    assert isinstance(g["vision_cfg"]["layers"], list) and "timm_model_name" not in g["vision_cfg"]
    assert "efficientnet" in e["vision_cfg"]["timm_model_name"]
    assert g["vision_cfg"]["image_size"] != e["vision_cfg"]["image_size"]
    assert g["text_cfg"]["width"] != e["text_cfg"]["width"]
    assert _card("shapes-guide")["seed"] != _card("shapes-eval")["seed"]


@pytest.mark.slow  # 300 scenes per model, about a minute each on a shared CPU
@pytest.mark.parametrize("name", NAMES)
def test_fresh_sample_matches_stated_accuracy(name):
    acc = evaluate_model(load_clip(name), n=N_PER_FORM, seed=FRESH_SEED)
    stated = _card(name)["accuracy"]
    # trials per attribute at N_PER_FORM scenes per form (see zeroshot.py)
    trials = {"background": 5, "colour": 7, "shape": 7, "size": 1, "position": 1, "relation": 2}
    for attr, p in stated.items():
        k = trials[attr] * N_PER_FORM
        margin = 3 * math.sqrt(max(p * (1 - p), 0.01) / k) + 0.01  # ~3 sigma of a binomial sample
        assert acc[attr] >= p - margin, (name, attr, acc[attr], p)


def test_the_one_loader_gives_open_clips_model(loaded):
    """``load_clip(NAME)`` (what generate, ranking and the evaluators use) embeds as open_clip's own model does."""
    from clipstudio.worlds.shapes.render import render_batch, sample_scene
    import numpy as np

    name, model, tokenizer, preprocess = loaded
    guide = load_clip(name)
    rng = np.random.default_rng(0)
    images = render_batch([sample_scene(rng) for _ in range(4)], guide.image_size)
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    texts = ["a red circle on a blue background", "a green square above a white triangle on a black background"]
    with torch.no_grad():
        expected_i = torch.nn.functional.normalize(model.encode_image((images - mean) / std), dim=-1)
        expected_t = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        assert torch.allclose(guide.encode_image(images), expected_i, atol=1e-5)
    assert torch.allclose(guide.encode_text(texts), expected_t, atol=1e-5)


def test_open_clip_preprocess_path_reads_colours(loaded):
    """The lead's path: PIL image -> open_clip preprocess -> encode, vs. candidate captions."""
    from PIL import Image

    from clipstudio.worlds.shapes.render import Scene, ShapeObject, render

    name, model, tokenizer, preprocess = loaded
    scene = Scene("blue", (ShapeObject("circle", "red", 0.5, 0.5, 0.5),))
    x = preprocess(Image.fromarray(render(scene, 128)))[None]
    texts = ["a red circle on a blue background", "a red circle on a green background",
             "a yellow circle on a blue background", "a red circle on a white background"]
    with torch.no_grad():
        f_i = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        f_t = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)
    assert int((f_t @ f_i[0]).argmax()) == 0
