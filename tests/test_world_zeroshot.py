"""Zero-shot accuracy: candidate sets follow the world's rules, and the measure tells a trained CLIP from chance."""
import numpy as np
import pytest

from clipstudio.cli import main
from clipstudio.guide.clip import load_clip
from clipstudio.worlds.shapes.captions import spec_from_scene
from clipstudio.worlds.shapes.render import COLOURS, POSITIONS, SHAPES, Scene, ShapeObject
from clipstudio.worlds.shapes.zeroshot import ATTRIBUTES, candidate_specs, eval_scenes, evaluate_model


def test_candidates_replace_one_attribute_by_every_value_the_world_allows():
    scene = Scene("blue", (ShapeObject("circle", "red", 0.5, 0.5, 0.3),), form="plain")
    spec = spec_from_scene(scene)
    sizes = {attr: [len(group) for group in candidate_specs(spec, attr)] for attr in ATTRIBUTES}
    # background: every colour but red (the object's) -> 7; colour: every colour but blue -> 7; shape: 3
    assert sizes == {"background": [len(COLOURS) - 1], "colour": [len(COLOURS) - 1], "shape": [len(SHAPES)],
                     "size": [], "position": [], "relation": []}
    group = candidate_specs(spec, "colour")[0]
    assert group[0] == spec and all(c.background == "blue" and c.objects[0].colour != "blue" for c in group)


def test_relation_candidates_are_both_relations_in_both_orders():
    scene = next(s for s in eval_scenes(4, 0) if s.form == "left_of")
    spec = spec_from_scene(scene)
    (group,) = candidate_specs(spec, "relation")
    assert len(group) == 4 and len(set(group)) == 4 and group[0] == spec
    assert len(candidate_specs(spec_from_scene(next(s for s in eval_scenes(4, 0) if s.form == "positioned")),
                               "position")[0]) == len(POSITIONS)


def test_a_trained_clip_reads_the_scenes_and_a_random_one_does_not(tiny_clip):
    trained = evaluate_model(load_clip("shapes-guide"), n=4, seed=7)
    chance = evaluate_model(load_clip(tiny_clip), n=4, seed=7)
    assert set(trained) == set(ATTRIBUTES)
    assert min(trained.values()) >= 0.9, trained
    # a measure that always picked the first candidate would give a random model 100%
    assert chance["colour"] < 0.5 and chance["background"] < 0.5, chance


def test_eval_clip_command_prints_the_table_and_refuses_bad_input(capsys):
    assert main(["eval", "clip", "--model", "shapes-guide", "-n", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot accuracy of shapes-guide (2 scenes per form)" in out
    assert all(attr in out for attr in ATTRIBUTES)
    for argv, message in ((["-n", "0"], "-n must be positive"), (["--model", "nope"], "unknown CLIP model"),
                          (["--checkpoint", "/no/such.pt"], "CLIP checkpoint not found")):
        assert main(["eval", "clip", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
