"""``clipstudio eval ranking`` on the embedded shapes models: the report's schema and its invariants."""
import json

import pytest

from clipstudio.cli import main


def test_ranking_report_with_the_checker_as_a_ranker_reaches_any_of_n(tmp_path, capsys):
    figures = tmp_path / "ranking.json"
    code = main(["eval", "ranking", "--prompts", "3", "--candidates", "3", "--steps", "3", "--guidance", "3",
                 "--rankers", "check,shapes-guide-contrast", "--threads", "1", "--json", str(figures)])
    assert code == 0
    out = capsys.readouterr().out
    assert "any of N (ceiling)" in out and "shapes-guide-contrast" in out
    report = json.loads(figures.read_text())
    assert report["prompts"] == 3 and report["candidates"] == 3 and report["diffuse"] == {"steps": 3, "guidance": 3.0}
    assert list(report["any_of_n"]) == ["1", "2", "3"]
    # The checker picks a passing candidate whenever there is one: it is the ceiling's own ranker.
    assert report["best_of_n"]["check"] == report["any_of_n"]
    for n, ceiling in report["any_of_n"].items():
        assert report["best_of_n"]["shapes-guide-contrast"][n] <= ceiling
    assert report["candidate_pass_rate"] <= report["any_of_n"]["3"]
    assert report["auc"]["check"] in (None, 1.0)


@pytest.mark.parametrize("argv,message", [(["--candidates", "0"], "--candidates and --prompts must be 1 or more"),
                                          (["--rankers", " , "], "--rankers needs at least one name"),
                                          (["--backend", "generate", "--guidance", "3"], "apply to --backend diffuse"),
                                          (["--guidance", "inf"], "--guidance must be a finite"),
                                          (["--rankers", "no-such-clip", "--prompts", "1"], "no-such-clip"),
                                          (["--checkpoint", "/no/such.pt"], "missing diffusion checkpoint"),
                                          (["--backend", "generate", "--checkpoint", "x.pt"], "apply to --backend")])
def test_eval_ranking_bad_input_is_one_line(argv, message, capsys):
    assert main(["eval", "ranking", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_ranking_of_a_checkpoint_file(tmp_path, capsys):
    """--checkpoint ranks samples of a fine-tune's file (here a tiny random shapes-diffusion checkpoint)."""
    from diffusion_fixtures import write_tiny_checkpoint
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pt", seed=3)
    figures = tmp_path / "r.json"
    assert main(["eval", "ranking", "--checkpoint", str(ckpt), "--prompts", "2", "--candidates", "2", "--steps", "2",
                 "--rankers", "check", "--threads", "1", "--json", str(figures)]) == 0
    report = json.loads(figures.read_text())
    assert report["model"] == str(ckpt) and report["best_of_n"]["check"] == report["any_of_n"]


def test_ranking_of_guided_generation_seeds(capsys):
    """--backend generate ranks seeds of the world's default recipe (two candidates of one prompt)."""
    assert main(["eval", "ranking", "--backend", "generate", "--prompts", "1", "--candidates", "2",
                 "--rankers", "shapes-guide", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 prompts x 2 candidates from guided generation" in out and "shapes-guide" in out
