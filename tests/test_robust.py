"""Adversarial robustness (issue 12): PGD, the FARE and TeCoA objectives, ``train robust`` (the objective
drops, resume is exact, the checkpoint loads), ``eval robust``, the over-optimization gap, hub CLIP names."""
from __future__ import annotations

import json

import pytest
import torch

from clipstudio.cli import main
from clipstudio.guide import robust
from clipstudio.guide.clip import HUB_CLIPS, create_clip_model, list_clip_models, load_clip
from clipstudio.worlds.shapes import adherence
from clipstudio.worlds.shapes import train_robust as tr
from clipstudio.worlds.shapes.train_clip import make_batch
from clipstudio.worlds.shapes.zeroshot import evaluate_model

TINY = "clipstudio-test-tiny:random"


# --------------------------------------------------------------------------- the maths
@pytest.mark.parametrize("norm", robust.NORMS)
def test_pgd_finds_the_worst_point_of_the_ball_for_a_linear_loss(norm):
    images = torch.full((2, 3, 4, 4), 0.5)
    weights = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = 0.1
    adv = robust.pgd_attack(lambda x: (x * weights).sum(), images, norm, eps, step_size=0.05, steps=20,
                            generator=torch.Generator().manual_seed(1))
    delta = adv - images
    # the maximizer of <w, delta> over the ball: eps * sign(w) (L-inf), eps * w / |w| per image (L2)
    best = eps * weights.sign() if norm == "linf" else eps * weights / weights.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(delta, best, atol=1e-4)


@pytest.mark.parametrize("norm", robust.NORMS)
def test_pgd_stays_in_the_ball_and_in_the_unit_range(norm):
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    images[0] = 1.0  # a saturated image cannot be pushed further up
    adv = robust.pgd_attack(lambda x: x.sum(), images, norm, 0.2, 0.1, 5, torch.Generator().manual_seed(0))
    delta = adv - images
    size = delta.abs().flatten(1).amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert bool((size <= 0.2 + 1e-5).all()) and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert torch.equal(adv[0], images[0])
    assert torch.equal(robust.pgd_attack(lambda x: x.sum(), images, norm, 0.0), images)  # eps 0: the images


def test_bad_threat_model_is_one_line():
    with pytest.raises(Exception, match="unknown threat model 'l3'; choose one of: linf, l2"):
        robust.pgd_attack(lambda x: x.sum(), torch.zeros(1, 3, 2, 2), "l3")


def test_fare_and_tecoa_losses():
    a = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert float(robust.fare_loss(a, a)) == 0.0
    assert float(robust.fare_loss(a + 1, a)) == pytest.approx(8.0)  # squared L2 over 8 dims, batch mean
    right = robust.tecoa_loss(a, a, 10.0)  # each image's own caption embedding is the image's
    wrong = robust.tecoa_loss(a, a.roll(1, 0), 10.0)
    assert float(right) < float(wrong)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny_run():
    config = tr.RobustTrainConfig(model=TINY, steps=6, batch=8, lr=3e-3, eps=8, step_size=2, pgd_steps=3,
                                  out="unused.pt", eval_n=0).validate()
    return tr._start_run(config, log=lambda _: None)


@pytest.mark.parametrize("objective", robust.OBJECTIVES)
def test_the_attack_raises_the_objective_of_the_tiny_model(tiny_run, objective):
    tiny_run.config.objective = objective
    images, captions = make_batch((5, 0), 8, tiny_run.guide.image_size)
    loss_fn = tr.objective_fn(tiny_run, images, captions)
    adv = robust.pgd_attack(loss_fn, images, "linf", 8 / 255, 2 / 255, 5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(loss_fn(adv)) > float(loss_fn(images)) * 1.05 + 1e-6
    assert tiny_run.guide.model.visual.conv1.weight.grad is None  # attacking trains nothing


@pytest.mark.parametrize("objective", robust.OBJECTIVES)
def test_the_objective_under_attack_drops_over_a_few_steps_on_one_batch(objective):
    config = tr.RobustTrainConfig(model=TINY, objective=objective, steps=6, batch=8, lr=1e-3, warmup=0, eps=8,
                                  step_size=2, pgd_steps=3, out="unused.pt", eval_n=0).validate()
    run = tr._start_run(config, log=lambda _: None)
    text_before = {k: v.clone() for k, v in run.guide.model.state_dict().items() if not k.startswith("visual.")}
    history = [tr.train_step(run, 0) for _ in range(config.steps)]  # the batch (and attack start) of step 0
    # FARE starts where the clean embeddings equal their targets; its first update leaves that point, and
    # from there on the loss under attack falls. TeCoA falls from the start.
    first = history[1] if objective == "fare" else history[0]
    assert history[-1] < 0.7 * first, history
    text_after = {k: v for k, v in run.guide.model.state_dict().items() if not k.startswith("visual.")}
    assert all(torch.equal(text_before[k], text_after[k]) for k in text_before)  # the text tower is untouched


def _train(tmp_path, name, **changes) -> dict:
    config = tr.RobustTrainConfig(model=TINY, steps=4, batch=8, lr=3e-3, eps=8, step_size=2, pgd_steps=2,
                                  save_every=1, eval_n=0, out=str(tmp_path / f"{name}.pt"), **changes)
    return tr.train(config, command="test", log=lambda _: None, progress=False)


def test_resume_is_exact_and_the_checkpoint_loads_with_its_card(tmp_path):
    straight = _train(tmp_path, "straight")
    _train(tmp_path, "split", stop_after=2)
    resumed = _train(tmp_path, "split", resume=True)
    assert resumed["history"] == straight["history"] and len(straight["history"]) == 4
    a = torch.load(tmp_path / "straight.pt", weights_only=True)
    b = torch.load(tmp_path / "split.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "straight.json").read_text())
    assert card["model"] == "clipstudio-test-tiny" and card["command"] == "test" and card["step"] == 4
    guide = load_clip(str(tmp_path / "straight.pt"))  # the card names the architecture
    assert torch.equal(guide.model.visual.conv1.weight.half(), a["visual.conv1.weight"])


@pytest.mark.parametrize("argv,message", [
    (["train", "robust", "--eps", "-1"], "--eps must be between"),
    (["train", "robust", "--steps", "0"], "--steps must be positive"),
    (["train", "robust", "--model", "no-such-clip"], "unknown CLIP model 'no-such-clip'"),
    (["train", "robust", "--model", TINY, "--resume", "--out", "/nonexistent/x.pt"], "--resume: no training state"),
    (["eval", "robust", "-n", "0"], "-n must be >= 1"),
    (["eval", "robust", "--model", "hf-hub:chs20"], "hf-hub:ORG/REPO"),
    (["eval", "generate", "--generator", "nope"], "generator"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("clipstudio: warning")]
    assert len(err) == 1 and message in err[0], err


# --------------------------------------------------------------------------- evaluation
def test_attacked_accuracy_at_eps_zero_is_the_zero_shot_accuracy_and_an_attack_lowers_it():
    from clipstudio.worlds.shapes.robust_eval import attacked_accuracy

    guide = load_clip(TINY)
    clean = attacked_accuracy(guide, n=4, seed=7, eps=0)
    assert clean == pytest.approx(evaluate_model(guide, n=4, seed=7))
    attacked = attacked_accuracy(guide, n=4, seed=7, eps=32, steps=5)
    assert sum(attacked.values()) < sum(clean.values())


def test_eval_generate_takes_generator_layout_and_search_and_reports_the_gap(monkeypatch, capsys):
    made = []

    class TruthStudio:  # draws a true render: the gap to the reference render of the same seed is zero
        def __init__(self, config):
            made.append(config)
            self.config = config

        def run(self):
            class Result:
                image = adherence.reference_image(self.config.prompt, 64, self.config.seed)
            return Result()

    monkeypatch.setattr(adherence, "Studio", TruthStudio)
    argv = ["eval", "generate", "-n", "2", "--generator", "pixels", "--layout", "none", "--search", "0", "--json"]
    assert main(argv) == 0
    assert [(c.generator, c.layout, c.search) for c in made] == [("pixels", "none", 0)] * 2
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["over_optimization_gap"] == pytest.approx(0.0, abs=1e-6)
    assert summary["guide_distance"] == pytest.approx(summary["guide_distance_reference"])


def test_spherical_from_cosine_matches_the_guidance_loss():
    from clipstudio.losses import spherical_distance

    a, b = torch.nn.functional.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    assert adherence.spherical_from_cosine(float(a @ b)) == pytest.approx(float(spherical_distance(a, b)), abs=1e-5)


# --------------------------------------------------------------------------- hub names
def test_hub_clips_are_listed_and_fail_offline_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    assert set(HUB_CLIPS) <= set(list_clip_models())
    assert "hf-hub:chs20/fare2-clip" in HUB_CLIPS and "hf-hub:chs20/tecoa2-clip" in HUB_CLIPS
    assert main(["eval", "clip", "--model", "hf-hub:chs20/fare2-clip", "-n", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found offline" in err[0] and "open_clip_config.json" in err[0]
    assert main(["models"]) == 0 and "hf-hub:chs20/tecoa2-clip" in capsys.readouterr().out


def test_a_hub_model_in_the_cache_folder_loads_like_any_open_clip_model(monkeypatch, tmp_path):
    import open_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path))
    folder = tmp_path / "weights" / "someone--tiny-robust"
    folder.mkdir(parents=True)
    model, _ = create_clip_model(TINY)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    config = {"model_cfg": open_clip.get_model_config("clipstudio-test-tiny"), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    loaded, _ = create_clip_model("hf-hub:someone/tiny-robust")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
