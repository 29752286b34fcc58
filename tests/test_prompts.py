import math

import pytest

from clipstudio.errors import ClipstudioError
from clipstudio.guide.prompts import image_prompt, negative_prompt, parse_prompt, parse_prompts


def test_plain_text_has_unit_weight_and_no_stop():
    p = parse_prompt("a red circle on a blue background")
    assert (p.text, p.weight, p.stop) == ("a red circle on a blue background", 1.0, -math.inf)


def test_weight_and_stop():
    p = parse_prompt("a red circle:2.5:0.8")
    assert (p.text, p.weight, p.stop) == ("a red circle", 2.5, 0.8)


def test_negative_weight_is_a_negative_prompt():
    assert parse_prompt("red:-1").weight == -1.0
    assert negative_prompt("red").weight == -1.0
    assert negative_prompt("red:2").weight == -2.0


def test_pipe_joins_prompts():
    ps = parse_prompts("a red circle:1 | blurry:-0.5")
    assert [(p.text, p.weight) for p in ps] == [("a red circle", 1.0), ("blurry", -0.5)]


def test_colon_inside_text_is_kept():
    assert parse_prompt("note: a cat").text == "note: a cat"


@pytest.mark.parametrize("bad", ["a red circle:abc", "a red circle:1:x", ":2", "", "   ", "a:nan", "a:inf"])
def test_malformed_prompts_raise_one_line(bad):
    with pytest.raises(ClipstudioError) as info:
        parse_prompts(bad)
    assert "\n" not in str(info.value)


def test_image_prompt_keeps_windows_drive_and_weight():
    assert image_prompt("C:/img.png").text == "C:/img.png"
    p = image_prompt("/tmp/img.png:0.5")
    assert (p.text, p.weight, p.is_image) == ("/tmp/img.png", 0.5, True)
