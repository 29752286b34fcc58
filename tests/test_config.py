import pytest
import yaml

from clipstudio.config import GenerateConfig
from clipstudio.errors import ClipstudioError
from clipstudio.recipes import dump_recipe, list_recipes, load_recipe


def test_recipe_holds_only_differences_and_round_trips():
    config = GenerateConfig(prompt="a red circle", steps=7, tv=0.25, clip=["a", "b"], generator_options={"x": 1})
    diff = config.to_dict()
    assert diff == {"prompt": "a red circle", "steps": 7, "tv": 0.25, "clip": ["a", "b"], "generator_options": {"x": 1}}
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
