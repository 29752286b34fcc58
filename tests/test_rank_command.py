"""`clipstudio rank`: candidates made or taken, scored by CLIP models, the best kept with a contact sheet."""
from __future__ import annotations

import json

from PIL import Image

from clipstudio.cli import main
from clipstudio.ranking import contact_sheet, ensemble_scores


def _scene(tmp_path, name, shape, colour):
    from clipstudio.worlds.shapes.render import Scene, ShapeObject, render

    image = render(Scene(background="white", objects=(ShapeObject(shape, colour, 0.5, 0.5, 0.5),)), 64)
    Image.fromarray(image).save(tmp_path / f"{name}.png")


def test_rank_a_folder_keeps_the_best_first(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name, shape, colour in (("a", "square", "blue"), ("b", "circle", "red"), ("c", "triangle", "green")):
        _scene(images, name, shape, colour)
    out = tmp_path / "ranked"
    code = main(["rank", "a red circle on a white background", "-k", "2", "-o", str(out), "--from-dir", str(images),
                 "--clip", "shapes-guide", "--clip", "shapes-eval"])
    assert code == 0
    report = json.loads((out / "scores.json").read_text())
    assert [e["source"] for e in report["kept"]][0] == "b.png"
    assert report["kept"][0]["score"] >= report["kept"][1]["score"] and len(report["kept"]) == 2
    assert set(report["kept"][0]["scores"]) == {"shapes-guide", "shapes-eval"}
    assert (out / "rank-01.png").is_file() and (out / "rank-02.png").is_file() and not (out / "rank-03.png").exists()
    assert Image.open(out / "contact-sheet.png").size[0] == 2 * 128


def test_ensemble_score_is_the_mean_of_the_models(tiny_clip):
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    mean, per_model = ensemble_scores(images, "a red square", [tiny_clip, "shapes-guide"])
    for i in range(2):
        assert abs(mean[i] - (per_model[tiny_clip][i] + per_model["shapes-guide"][i]) / 2) < 1e-6


def test_contact_sheet_grid():
    sheet = contact_sheet([Image.new("RGB", (16, 16))] * 5, ["x"] * 5, columns=4, cell=32)
    assert sheet.size[0] == 4 * 32 and sheet.size[1] > 2 * 32


def test_rank_generate_and_diffuse_backends(tmp_path, tiny_clip):
    out = tmp_path / "gen"
    assert main(["rank", "a red circle", "-n", "2", "-k", "1", "-o", str(out), "--quiet", "--set", "steps=1",
                 "--set", "search=0", "--set", "size=32", "--set", "cutn=2"]) == 0
    assert json.loads((out / "scores.json").read_text())["candidates"] == 2
    out = tmp_path / "diffuse"
    assert main(["rank", "a red circle on a white background", "-n", "2", "-k", "2", "-o", str(out), "--backend",
                 "diffuse", "--steps", "2", "--clip", "shapes-eval"]) == 0
    kept = json.loads((out / "scores.json").read_text())["kept"]
    assert [e["rank"] for e in kept] == [1, 2] and kept[0]["score"] >= kept[1]["score"]


def test_rank_bad_folder_is_one_line(tmp_path, capsys):
    assert main(["rank", "x", "-o", str(tmp_path / "o"), "--from-dir", str(tmp_path / "none")]) == 2
    assert "image folder not found" in capsys.readouterr().err
