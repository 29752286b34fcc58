"""compare: every setting of both halves validated before any work; the evaluator score is ranking.score_images;
check pass rates only for shapes-world prompts. Runs in seconds with a tiny seeded diffusion model in-process
(the full comparison is a measurement, run by hand)."""
import json

import numpy as np
import pytest
import torch

from clipstudio import embedded
from clipstudio.cli import main
from clipstudio.diffusion.config import DiffuseConfig
from clipstudio.errors import ClipstudioError
from clipstudio.worlds.shapes import compare as C

torch.set_num_threads(1)
SHAPES_PROMPT = "a red circle on a blue background"
FAST_CLIP = {"steps": 1, "search": 0, "cutn": 4}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("diffusers")
    from diffusion_fixtures import TINY_MODEL, write_tiny_world
    folder = write_tiny_world(tmp_path_factory.mktemp("world"))
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPSTUDIO_WORLDS", str(folder))
    embedded.worlds.cache_clear()
    yield TINY_MODEL
    mp.undo()
    embedded.worlds.cache_clear()


def test_contact_sheet_layout(tmp_path):
    from PIL import Image
    rows = [[np.full((32, 32, 3), 10 * i, np.uint8), np.full((64, 64, 3), 200, np.uint8)] for i in range(3)]
    path = tmp_path / "sheet.png"
    C.contact_sheet(rows, ["a", "b", "c"], C.METHODS, str(path), cell=50)
    im = Image.open(path)
    assert im.size == (330 + 2 * 50, 20 + 3 * 50)
    assert im.getpixel((330 + 50 + 25, 20 + 25)) == (200, 200, 200)
    assert im.getpixel((330 + 25, 20 + 2 * 50 + 25)) == (20, 20, 20)


def test_plan_validates_both_halves_before_running():
    ok = DiffuseConfig(model="shapes-diffusion")
    with pytest.raises(ClipstudioError, match="unknown method"):
        C.plan_compare([SHAPES_PROMPT], [0], ["dalle"], diffuse=ok)
    with pytest.raises(ClipstudioError, match="at least one prompt"):
        C.plan_compare([], [0], diffuse=ok)
    with pytest.raises(ClipstudioError, match="unknown generator 'dalle'"):
        C.plan_compare([SHAPES_PROMPT], [0], ["clip-guided:dalle", "cfg-diffusion"], diffuse=ok)
    with pytest.raises(ClipstudioError, match="cutn must be between 1 and"):
        C.plan_compare([SHAPES_PROMPT], [0], clip_overrides={"cutn": 0}, diffuse=ok)
    with pytest.raises(ClipstudioError, match="guidance must be a finite"):
        C.plan_compare([SHAPES_PROMPT], [0], diffuse=ok.replace(guidance=float("inf")))
    with pytest.raises(ClipstudioError, match="needs an embedded --model or a --pipeline"):
        C.plan_compare([SHAPES_PROMPT], [0], diffuse=DiffuseConfig())
    plan = C.plan_compare([SHAPES_PROMPT, "a cat"], [0, 1], ["clip-guided:pixels", "cfg-diffusion"],
                          clip_overrides=FAST_CLIP, diffuse=ok.replace(steps=3))
    assert [r["seed"] for r in plan.runs["cfg-diffusion"]] == [0, 1, 0, 1] and not plan.shapes_prompts
    guided = plan.runs["clip-guided:pixels"][0]
    # the shapes recipe's section for the pixels generator applies, then the overrides
    assert guided["generator"] == "pixels" and guided["layout"] == "primitives" and guided["cutn"] == 4
    assert guided["clip"] == ["shapes-guide"]


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0"], "must be positive"),
    (["--generator", "dalle"], "unknown generator 'dalle'"),
    (["--guidance", "inf"], "guidance must be a finite number"),
    (["--eta", "nan"], "eta must be a finite number"),
    (["--clip-steps", "-1"], "steps must be between 0 and"),
    (["--model", "no-such-model"], "unknown embedded model 'no-such-model'"),
])
def test_command_bad_input_is_one_line_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "cmp"
    code = main(["compare", "-o", str(out), "--prompts", "1", "--seeds", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_compare_end_to_end_scores_with_score_images(tiny_model, tmp_path, monkeypatch):
    """One shapes prompt, one seed, the CLIP-guided pixels method and the tiny diffusion model, in this process."""
    from PIL import Image

    import clipstudio.ranking
    calls = []

    def fake_scores(images, texts, clip, device="cpu"):
        calls.append((len(images), list(texts), clip))
        return [0.25 + 0.5 * i for i in range(len(images))]
    monkeypatch.setattr(clipstudio.ranking, "score_images", fake_scores)
    plan = C.plan_compare([SHAPES_PROMPT], [0, 1], ["clip-guided:pixels", "cfg-diffusion"],
                          clip_overrides={**FAST_CLIP, "layout": "none"},
                          diffuse=DiffuseConfig(model=tiny_model, steps=2), evaluator="shapes-eval")
    res = C.compare(plan, str(tmp_path), isolated=False)
    assert list(res) == ["clip-guided:pixels", "cfg-diffusion"]
    assert calls == [(2, [SHAPES_PROMPT] * 2, "shapes-eval")] * 2
    for r in res.values():
        assert r["eval_clip_score"] == pytest.approx(0.5)        # the mean of score_images' values
        assert r["check_pass_rate"] in (0.0, 0.5, 1.0) and r["n"] == 2 and r["seconds_per_image"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "| clip-guided:pixels |" in report and "| cfg-diffusion |" in report and "(shapes-eval)" in report
    assert json.loads((tmp_path / "results.json").read_text()) == res
    assert Image.open(tmp_path / "sheet.png").size == (330 + 96 * 2, 20 + 96 * 2)


def test_non_shapes_prompts_report_no_check_rate(tiny_model, tmp_path, monkeypatch):
    import clipstudio.ranking
    monkeypatch.setattr(clipstudio.ranking, "score_images", lambda images, texts, clip, device="cpu": [0.1] * len(images))
    plan = C.plan_compare(["a photo of a cat"], [0], ["cfg-diffusion"], diffuse=DiffuseConfig(model=tiny_model, steps=2))
    res = C.compare(plan, str(tmp_path), isolated=False)
    assert res["cfg-diffusion"]["check_pass_rate"] is None
    assert "| cfg-diffusion | n/a |" in (tmp_path / "report.md").read_text()


def test_command_runs_in_process(tiny_model, tmp_path, capsys):
    recipe = tmp_path / "fast.yaml"
    recipe.write_text("clip: [shapes-guide]\ngenerator: pixels\nwidth: 32\nheight: 32\ncutn: 4\n")
    out = tmp_path / "cmp"
    code = main(["compare", "-o", str(out), "--prompt", SHAPES_PROMPT, "--seeds", "1", "--recipe", str(recipe),
                 "--clip-steps", "1", "--model", tiny_model, "--diffusion-steps", "2", "--in-process",
                 "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cfg-diffusion: check pass" in captured.out and (out / "report.md").is_file()
