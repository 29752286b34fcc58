"""``eval generate``: the judging of each image, the summary's arithmetic, and one-line errors for bad input."""
from dataclasses import dataclass

import pytest
from PIL import Image

from clipstudio.cli import main
from clipstudio.worlds.shapes import adherence
from clipstudio.worlds.shapes.prompts import prompt_set

PROMPTS = prompt_set(5, 11)  # one prompt of each grammar form


@dataclass
class FakeResult:
    image: Image.Image

    def save(self, path):
        self.image.save(path)


def _studio_drawing(draw):
    class FakeStudio:
        def __init__(self, config):
            self.config = config

        def run(self):
            return FakeResult(draw(self.config.prompt, self.config.seed))

    return FakeStudio


def test_a_generator_that_draws_the_truth_passes_everything(monkeypatch, tmp_path):
    monkeypatch.setattr(adherence, "Studio", _studio_drawing(lambda p, s: adherence.reference_image(p, 64, s)))
    report = adherence.evaluate_generation(PROMPTS, seeds=(0, 1), save_dir=str(tmp_path))
    summary = report.summary()
    assert summary["images"] == 10 and summary["pass_rate"] == 1.0
    assert summary["pass_rate_by_form"] == {f: 1.0 for f in ("above", "left_of", "plain", "positioned", "sized")}
    # the evaluator judges the very image it is compared with, so both scores agree
    assert summary["evaluator_score"] == pytest.approx(summary["evaluator_score_reference"], abs=1e-6)
    assert summary["evaluator_score"] > 0.3
    assert len(list(tmp_path.glob("*-ok-*.png"))) == 10


def test_a_generator_that_draws_another_prompt_fails_and_scores_lower(monkeypatch):
    shifted = dict(zip(PROMPTS, PROMPTS[1:] + PROMPTS[:1]))
    monkeypatch.setattr(adherence, "Studio",
                        _studio_drawing(lambda p, s: adherence.reference_image(shifted[p], 64, s)))
    summary = adherence.evaluate_generation(PROMPTS).summary()
    assert summary["images"] == 5 and summary["pass_rate"] == 0.0
    assert summary["evaluator_score"] < summary["evaluator_score_reference"] - 0.1
    assert all(row["failures"] for row in adherence.evaluate_generation(PROMPTS[:1]).rows)


def test_evaluator_is_the_one_scoring_function_with_the_evaluator_clip(monkeypatch):
    seen = {}
    monkeypatch.setattr(adherence, "score_images", lambda images, texts, clip: seen.setdefault("clip", clip) and [0.0])
    adherence.evaluator_scores([Image.new("RGB", (8, 8))], ["a red circle on a blue background"])
    assert seen["clip"] == "shapes-eval"


@pytest.mark.parametrize("argv,message", [
    (["-n", "0"], "-n must be at least 1"),
    (["--set", "steps"], "--set expects KEY=VALUE, got 'steps'"),
    (["--set", "=3"], "--set expects KEY=VALUE"),
    (["--sweep", "steps="], "--sweep expects KEY=V1,V2,..."),
    (["--sweep", "steps=1,,2"], "--sweep expects KEY=V1,V2,..."),
    (["--set", "bogus=1"], "unknown setting"),
    (["--set", "steps=-2"], "steps must be"),
    (["--recipe", "no-such-recipe"], "recipe"),
])
def test_bad_input_is_one_line_before_any_image(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(adherence, "Studio", None)  # no image may be made
    assert main(["eval", "generate", *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("clipstudio: warning")]
    assert len(lines) == 1 and message in lines[0], err


def test_sweep_runs_once_per_value_with_the_recipe_and_settings(monkeypatch, capsys):
    made = []

    def record(prompt, seed):
        return adherence.reference_image(prompt, 64, seed)

    studio = _studio_drawing(record)
    monkeypatch.setattr(adherence, "Studio", lambda config: made.append(config) or studio(config))
    assert main(["eval", "generate", "-n", "2", "--set", "cutn=8", "--sweep", "steps=1,2", "--json"]) == 0
    assert [(c.steps, c.cutn, c.clip) for c in made] == [(1, 8, ["shapes-guide"])] * 2 + [(2, 8, ["shapes-guide"])] * 2
    assert capsys.readouterr().out.count('"pass_rate": 1.0') == 2


def test_a_sweep_plots_pass_rate_and_evaluator_score_against_the_swept_setting(monkeypatch, tmp_path, capsys):
    class StepsStudio:  # one step draws a grey square, two steps the true render: pass rates 0 and 1
        def __init__(self, config):
            self.config = config

        def run(self):
            if self.config.steps == 2:
                return FakeResult(adherence.reference_image(self.config.prompt, 64, self.config.seed))
            return FakeResult(Image.new("RGB", (64, 64), (128, 128, 128)))

    monkeypatch.setattr(adherence, "Studio", StepsStudio)
    plot = tmp_path / "steps.png"
    assert main(["eval", "generate", "-n", "2", "--sweep", "steps=1,2", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert '"pass_rate": 0.0' in out and '"pass_rate": 1.0' in out
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 200


def test_plot_without_a_sweep_is_one_line(capsys):
    assert main(["eval", "generate", "-n", "1", "--plot", "x.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--plot needs --sweep" in err[0]
