"""The diffuse command and its DiffuseConfig: validation before any work, full settings in every PNG, ``--from``
reruns bit for bit, and pinned pixels of a tiny seeded model (as diffusers pins expected output slices)."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from clipstudio import embedded  # noqa: E402
from clipstudio.cli import main  # noqa: E402
from clipstudio.diffusion.config import DiffuseConfig  # noqa: E402
from clipstudio.errors import ClipstudioError  # noqa: E402
from clipstudio.images import read_png_settings  # noqa: E402
from diffusion_fixtures import TINY_MODEL, write_tiny_world  # noqa: E402

torch.set_num_threads(1)
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    folder = write_tiny_world(tmp_path_factory.mktemp("world"))
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPSTUDIO_WORLDS", str(folder))
    embedded.worlds.cache_clear()
    yield folder
    mp.undo()
    embedded.worlds.cache_clear()


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


# --------------------------------------------------------------------------- pinned output of a tiny seeded model

# Pixels of `diffuse PROMPT --model tiny-diffusion --steps 3 --seed 0` (ddim, w=3): (row, col) -> RGB in [0, 1].
EXPECTED = {(0, 0): (0.1045, 0.2258, 0.7539), (7, 21): (0.9965, 0.3701, 0.4521), (31, 31): (0.2778, 0.6698, 0.2650)}


def test_tiny_model_output_slice(tiny_world):
    from clipstudio.diffusion.backend import load_embedded_backend

    be = load_embedded_backend(TINY_MODEL)
    images = be.generate(PROMPT, steps=3, seed=0)
    assert images.shape == (1, 3, 32, 32)
    got = {pos: tuple(round(float(v), 4) for v in images[0, :, pos[0], pos[1]]) for pos in EXPECTED}
    for pos, rgb in EXPECTED.items():
        assert got[pos] == pytest.approx(rgb, abs=2e-3), got
    other = be.generate(PROMPT, steps=3, seed=1)
    assert (images - other).abs().max() > 0.01          # the seed matters, so the pin is not of a constant


def test_diffuse_writes_settings_and_from_reproduces_bit_for_bit(tiny_world, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, stdout, err = run(["diffuse", PROMPT, "--model", TINY_MODEL, "--steps", "3", "--seed", "0",
                             "--negative", "green", "--scale", "2", "-o", str(out), "--threads", "1"], capsys)
    assert code == 0, err
    meta = read_png_settings(out)
    assert meta["command"] == "diffuse"
    settings = meta["settings"]
    assert settings == {**DiffuseConfig().to_full_dict(), "prompt": PROMPT, "model": TINY_MODEL, "steps": 3,
                        "negative": "green", "scale": 2, "guidance": 3.0, "guidance_rescale": 0.0,
                        "sampler": "ddim"}
    assert Image.open(out).size == (64, 64)
    again = tmp_path / "again.png"
    code, _, err = run(["diffuse", "--from", str(out), "-o", str(again)], capsys)
    assert code == 0, err
    assert np.array_equal(pixels(out), pixels(again))
    assert read_png_settings(again)["settings"] == settings
    # a typed option overrides the recorded one
    other = tmp_path / "other.png"
    assert run(["diffuse", "--from", str(out), "--seed", "5", "-o", str(other)], capsys)[0] == 0
    assert read_png_settings(other)["settings"]["seed"] == 5
    assert not np.array_equal(pixels(out), pixels(other))


def test_batch_writes_numbered_files_that_rerun(tiny_world, tmp_path, capsys):
    out = tmp_path / "b.png"
    assert run(["diffuse", PROMPT, "--model", TINY_MODEL, "--steps", "2", "--n", "2", "-o", str(out)], capsys)[0] == 0
    first, second = tmp_path / "b_0.png", tmp_path / "b_1.png"
    assert read_png_settings(second)["index"] == 1 and read_png_settings(first)["settings"]["n"] == 2
    assert not np.array_equal(pixels(first), pixels(second))
    assert run(["diffuse", "--from", str(second), "-o", str(tmp_path / "c.png")], capsys)[0] == 0
    assert np.array_equal(pixels(second), pixels(tmp_path / "c_1.png"))


# --------------------------------------------------------------------------- bad input: one line, exit 2, no work

BAD = [
    (["--guidance", "inf"], "guidance must be a finite number >= 0, got inf"),
    (["--guidance", "-1"], "guidance must be a finite number"),
    (["--eta", "nan"], "eta must be a finite number >= 0, got nan"),
    (["--guidance-rescale", "1.5"], "guidance-rescale must be a finite number in [0, 1]"),
    (["--steps", "0"], "steps must be a positive integer"),
    (["--n", "0"], "n must be between 1"),
    (["--scale", "0"], "scale must be between 1"),
    (["--sampler", "plms"], "unknown sampler 'plms'"),
    (["--model", "no-such-model"], "unknown embedded model 'no-such-model'"),
    (["--model", TINY_MODEL, "--pipeline", "x/y"], "not both"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--model", TINY_MODEL, "--sampler", "flow-euler"], "sampler 'flow-euler' is for flow models"),
    (["--threads", "-1"], "--threads must be"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_is_one_line_exit_2(tiny_world, tmp_path, capsys, extra, message):
    out = tmp_path / "bad.png"
    code, _, err = run(["diffuse", PROMPT, "-o", str(out), *extra], capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_missing_prompt_and_foreign_png(tiny_world, tmp_path, capsys):
    code, _, err = run(["diffuse", "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "needs a prompt" in err
    from clipstudio.images import save_png
    foreign = save_png(Image.new("RGB", (8, 8)), tmp_path / "g.png", {"settings": {"prompt": "x", "clip": ["y"]}})
    code, _, err = run(["diffuse", "--from", str(foreign), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "not made by 'clipstudio diffuse'" in err


def test_list_samplers_reads_the_one_registry(capsys):
    from clipstudio.diffusion.sampling import list_samplers
    code, out, _ = run(["diffuse", "--list-samplers"], capsys)
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list_samplers()


# --------------------------------------------------------------------------- the config itself

def test_config_round_trips_and_refuses_unknown_keys():
    config = DiffuseConfig(prompt="a", guidance=2.0, steps=7, model="m", n=3)
    assert DiffuseConfig.from_dict(config.to_dict()) == config
    assert DiffuseConfig.from_dict(json.loads(json.dumps(config.to_full_dict()))) == config
    assert DiffuseConfig.from_dict({"prompt": "a", "guidance": 2, "steps": 7.0}).guidance == 2.0
    with pytest.raises(ClipstudioError, match="unknown diffuse setting"):
        DiffuseConfig.from_dict({"prompt": "a", "cutn": 4})
    for bad in ({"steps": "3"}, {"seed": 1.5}, {"n": True}, {"guidance": "high"}):
        with pytest.raises(ClipstudioError, match="must be"):
            DiffuseConfig.from_dict({"prompt": "a", **bad}).validate()
    with pytest.raises(ClipstudioError, match="finite"):
        DiffuseConfig(prompt="a", guidance=math.inf).validate()
