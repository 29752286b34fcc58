import pytest
import yaml

from clipstudio.config import GenerateConfig
from clipstudio.errors import ClipstudioError
from clipstudio.recipes import dump_recipe, list_recipes, load_recipe, recipe_settings


def test_recipe_holds_only_differences_and_round_trips():
    config = GenerateConfig(prompt="a red circle", steps=7, losses={"tv": 0.25}, clip=["a", "b"],
                            generator_options={"x": 1})
    diff = config.to_dict()
    assert diff == {"prompt": "a red circle", "steps": 7, "losses": {"tv": 0.25}, "clip": ["a", "b"],
                    "generator_options": {"x": 1}}
    assert GenerateConfig.from_dict(yaml.safe_load(dump_recipe(config))) == config
    assert GenerateConfig.from_dict(GenerateConfig().to_dict()) == GenerateConfig()


def test_full_dict_round_trips_through_json_types():
    config = GenerateConfig(prompt="x", lr=1, width=96)
    assert GenerateConfig.from_dict(config.to_full_dict()) == config
    assert isinstance(GenerateConfig.from_dict({"lr": 1}).lr, float)


@pytest.mark.parametrize("name", list_recipes())
def test_shipped_recipes_load(name):
    assert GenerateConfig.from_dict(load_recipe(name)).to_dict() == load_recipe(name)


def test_unknown_setting_is_an_error(tmp_path):
    with pytest.raises(ClipstudioError, match="unknown setting"):
        GenerateConfig.from_dict({"stepz": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ClipstudioError, match="cannot read recipe"):
        load_recipe(str(bad))


def test_settings_of_older_versions_still_load():
    old = {"prompt": "x", "tv": 0.5, "anchor": 0.0, "perceptual_net": "vgg", "layout": "auto", "search": None}
    config = GenerateConfig.from_dict(old)
    assert config.losses == {"tv": 0.5} and config.loss_options == {"perceptual": {"net": "vgg"}}
    assert config.layout == "none" and config.search == 0


def test_a_recipe_section_for_the_named_generator_replaces_its_settings(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("x-opts: &o {count: 1}\ngenerator: primitives\ngenerator_options: *o\nsteps: 5\n"
                      "generators:\n  pixels: {generator_options: {}, steps: 9, layout: primitives, layout_options: *o}\n")
    assert recipe_settings(str(recipe)) == {"generator": "primitives", "generator_options": {"count": 1}, "steps": 5}
    assert recipe_settings(str(recipe), {"generator": "pixels", "seed": 3}) == {
        "generator": "pixels", "generator_options": {}, "steps": 9, "layout": "primitives",
        "layout_options": {"count": 1}, "seed": 3}
    recipe.write_text("generators:\n  pixels: {stepz: 1}\n")
    with pytest.raises(ClipstudioError, match="unknown setting"):
        recipe_settings(str(recipe))


def test_a_generator_sections_layouts_entry_applies_for_the_runs_layout(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("generator: primitives\nsteps: 5\ngenerators:\n  pixels:\n    layout: primitives\n    steps: 9\n"
                      "    layouts: {none: {steps: 50, cut_noise: 0.6}}\n")
    assert recipe_settings(str(recipe), {"generator": "pixels"}) == {
        "generator": "pixels", "layout": "primitives", "steps": 9}
    assert recipe_settings(str(recipe), {"generator": "pixels", "layout": "none"}) == {
        "generator": "pixels", "layout": "none", "steps": 50, "cut_noise": 0.6}
    assert recipe_settings(str(recipe), {"generator": "pixels", "layout": "none", "steps": 7})["steps"] == 7
    assert recipe_settings(str(recipe)) == {"generator": "primitives", "steps": 5}  # no section for it
    recipe.write_text("generators:\n  pixels: {layouts: {none: {stepz: 1}}}\n")
    with pytest.raises(ClipstudioError, match="unknown setting"):
        recipe_settings(str(recipe))
    recipe.write_text("generators:\n  pixels: {layouts: {none: 3}}\n")
    with pytest.raises(ClipstudioError, match="must map layout names to settings"):
        recipe_settings(str(recipe))


def test_core_defaults_are_neutral():
    """No world's policy in the core: no search, no layout, an open_clip guide (issue 10)."""
    config = GenerateConfig()
    assert config.search == 0 and config.layout == "none" and config.generator == "pixels"
    assert not any(spec.startswith("shapes") for spec in config.clip)
