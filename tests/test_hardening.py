"""Hostile input (issue 11): nothing in a file runs code, trust never comes from a file, every bad input is one
line and exit 2, outputs never replace special files and never hold NaN, runs that cannot fit fail at once."""
from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

from clipstudio import images, resources
from clipstudio.cli import main
from clipstudio.config import GenerateConfig
from clipstudio.errors import ClipstudioError

FAST = ["--size", "32", "32", "--steps", "2", "--cutn", "2", "--quiet", "--generator", "pixels", "--layout", "none"]


class WritesMarker:
    """Unpickling this object would write ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def run(argv, capsys):
    """(exit code, stderr lines that are not warnings) of the CLI run in-process."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if not line.startswith("clipstudio: warning")]


def assert_one_line(argv, capsys, match: str | None = None) -> str:
    code, lines = run(argv, capsys)
    assert code == 2 and len(lines) == 1 and "error: " in lines[0], lines
    assert "Traceback" not in lines[0]
    if match:
        assert match in lines[0], lines[0]
    return lines[0]


def png_with_metadata(path: Path, metadata) -> Path:
    """A PNG whose clipstudio text chunk holds ``metadata`` (any JSON, or raw text)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(images.SETTINGS_KEY, metadata if isinstance(metadata, str) else json.dumps(metadata))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


# --- code execution ------------------------------------------------------------------------------------------

def vqgan_settings(tmp_path: Path, tiny_clip: str, ckpt: Path, config: Path, trust: bool) -> dict:
    return {"prompt": "a red circle", "clip": [tiny_clip], "width": 16, "height": 16, "steps": 1, "cutn": 2,
            "generator": "vqgan", "generator_options": {"checkpoint": str(ckpt), "config": str(config),
                                                        **({"trust_checkpoint": True} if trust else {})}}


def evil_vqgan(tmp_path: Path, marker: Path) -> tuple[Path, Path]:
    from generator_fixtures import write_tiny_vqgan

    ckpt, config = write_tiny_vqgan(tmp_path)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"] = WritesMarker(marker)
    torch.save(checkpoint, ckpt)
    return ckpt, config


def test_from_png_saying_trust_checkpoint_does_not_unpickle(tmp_path, tiny_clip, capsys):
    marker = tmp_path / "marker"
    ckpt, config = evil_vqgan(tmp_path / "model", marker)
    png = png_with_metadata(tmp_path / "shared.png",
                            {"settings": vqgan_settings(tmp_path, tiny_clip, ckpt, config, trust=True)})
    out = tmp_path / "out.png"
    code, lines = run(["generate", "--from", png, "-o", out, "--quiet"], capsys)
    assert not marker.exists()  # the pickle in the checkpoint never ran
    assert code == 0, lines  # the restricted unpickler read the state_dict anyway
    recorded = images.read_png_run_settings(out)
    assert "trust_checkpoint" not in json.dumps(recorded)  # and the output does not pass trust on


def test_recipe_saying_trust_checkpoint_does_not_unpickle(tmp_path, tiny_clip, capsys):
    import yaml

    marker = tmp_path / "marker"
    ckpt, config = evil_vqgan(tmp_path / "model", marker)
    recipe = tmp_path / "shared.yaml"
    recipe.write_text(yaml.safe_dump(vqgan_settings(tmp_path, tiny_clip, ckpt, config, trust=True)))
    code, lines = run(["generate", "--recipe", recipe, "-o", tmp_path / "out.png", "--quiet"], capsys)
    assert code == 0 and not marker.exists(), lines


def test_trust_from_the_command_line_is_not_recorded(tmp_path, tiny_clip, capsys):
    from generator_fixtures import write_tiny_vqgan

    ckpt, config = write_tiny_vqgan(tmp_path)
    out = tmp_path / "out.png"
    code, lines = run(["generate", "x", "--clip", tiny_clip, "--size", 16, 16, "--steps", 1, "--cutn", 2, "--quiet",
                       "--generator", "vqgan", "--layout", "none", "--gen-opt", f"checkpoint={ckpt}",
                       "--gen-opt", f"config={config}", "--trust-checkpoint", "-o", out], capsys)
    assert code == 0, lines
    assert "trust_checkpoint" not in json.dumps(images.read_png_settings(out))


def test_settings_object_holding_trust_is_refused():
    config = GenerateConfig(prompt="x", generator_options={"trust_checkpoint": True})
    with pytest.raises(ClipstudioError, match="trust is given on the command line"):
        config.validate()
    with pytest.warns(UserWarning, match="ignored trust_checkpoint"):
        loaded = GenerateConfig.from_dict({"prompt": "x", "generator_options": {"trust_checkpoint": True}})
    assert loaded.generator_options == {}


def test_train_diffusion_resume_never_unpickles(tmp_path, capsys):
    marker = tmp_path / "marker"
    state = tmp_path / "out.pt.state"
    torch.save({"config": {"seed": 0, "batch": 2}, "evil": WritesMarker(marker)}, state)
    code, lines = run(["train", "diffusion", "--resume", "--state", state, "--out", tmp_path / "out.pt",
                       "--steps", 1, "--batch", 2, "--space", "pixel", "--no-progress"], capsys)
    assert not marker.exists()
    assert code == 2 and len(lines) == 1, lines


# --- outputs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "directory", "devnull"])
def test_output_onto_a_special_file_is_refused(tmp_path, tiny_clip, capsys, kind):
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        target = Path(os.devnull)
    before = target.lstat()
    line = assert_one_line(["generate", "x", "--clip", tiny_clip, *FAST, "-o", target], capsys)
    assert "not a regular file" in line or "is a directory" in line
    after = target.lstat()
    assert (before.st_ino, before.st_mode) == (after.st_ino, after.st_mode)


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = images.save_png(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, tiny_clip, capsys, monkeypatch):
    out = tmp_path / "out.png"
    out.write_bytes(b"old")

    def full(self, fp, *args, **kwargs):
        fp.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    assert_one_line(["generate", "x", "--clip", tiny_clip, *FAST, "-o", out], capsys, "No space left")
    assert out.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out.png"]


def test_non_finite_image_never_reaches_a_file(tmp_path):
    with pytest.raises(ClipstudioError, match="NaN or inf"):
        images.tensor_to_pil(torch.full((1, 3, 4, 4), float("nan")))
    from clipstudio.diffusion.backend import to_pil

    with pytest.raises(ClipstudioError, match="NaN or inf"):
        to_pil(torch.full((1, 3, 4, 4), float("inf")))


def test_stale_temporary_files_of_ours_are_cleaned_others_kept(tmp_path):
    dead = tmp_path / ".out.png.clipstudio-999999999-abc.tmp"  # no such pid
    old = tmp_path / f".out.png.clipstudio-{os.getpid()}-def.tmp"
    fresh = tmp_path / f".out.png.clipstudio-{os.getpid()}-ghi.tmp"
    foreign = tmp_path / ".other.tmp"
    for path in (dead, old, fresh, foreign):
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    images.check_writable(tmp_path / "out.png")
    assert not dead.exists() and not old.exists()
    assert fresh.exists() and foreign.exists()


def test_our_temporary_names_are_recognisable(tmp_path, monkeypatch):
    seen = []

    def record(handle):
        seen.extend(p.name for p in tmp_path.iterdir())
        handle.write(b"data")

    images.atomic_write(tmp_path / "x.bin", record)
    assert len(seen) == 1 and resources._TMP_NAME.match(seen[0]), seen


# --- resources -----------------------------------------------------------------------------------------------

def test_oversized_run_fails_fast_naming_the_setting(tmp_path, capsys, monkeypatch):
    import clipstudio.studio as studio_module

    loaded = []
    monkeypatch.setattr(studio_module, "load_clip", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(resources, "available_bytes", lambda device="cpu": 8 * resources.GIB)
    line = assert_one_line(["generate", "a red circle", "--size", 4096, 4096, "-o", tmp_path / "o.png"], capsys,
                           "lower --size")
    assert not loaded and "GiB" in line  # refused before any model was loaded


def test_many_cutouts_name_cutn(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resources, "available_bytes", lambda device="cpu": 2 * resources.GIB)
    assert_one_line(["generate", "x", "--clip", "ViT-B-32:random", "--cutn", 4096, "--size", 64, 64,
                     "-o", tmp_path / "o.png"], capsys, "lower --cutn")


def test_available_memory_is_read():
    free = resources.available_bytes("cpu")
    assert free is None or free > 0


# --- one clear line ------------------------------------------------------------------------------------------

@pytest.fixture
def bad_pngs(tmp_path):
    return {
        "list": png_with_metadata(tmp_path / "list.png", [1, 2, 3]),
        "settings-list": png_with_metadata(tmp_path / "sl.png", {"settings": ["prompt"]}),
        "steps-text": png_with_metadata(tmp_path / "st.png", {"settings": {"prompt": "x", "steps": "many"}}),
        "width-list": png_with_metadata(tmp_path / "wl.png", {"settings": {"prompt": "x", "width": [1]}}),
        "clip-text": png_with_metadata(tmp_path / "ct.png", {"settings": {"prompt": "x", "clip": "ViT"}}),
        "prompt-number": png_with_metadata(tmp_path / "pn.png", {"settings": {"prompt": 5}}),
        "losses-list": png_with_metadata(tmp_path / "ll.png", {"settings": {"prompt": "x", "losses": [1]}}),
        "lr-nan": png_with_metadata(tmp_path / "ln.png", '{"settings": {"prompt": "x", "lr": NaN}}'),
        "options-list": png_with_metadata(tmp_path / "ol.png", {"settings": {"prompt": "x", "generator_options": [1]}}),
        "not-json": png_with_metadata(tmp_path / "nj.png", "{not json"),
        "deep": png_with_metadata(tmp_path / "deep.png", "[" * 100000),
        "seed-huge": png_with_metadata(tmp_path / "sh.png", {"settings": {"prompt": "x", "seed": 10**30}}),
    }


@pytest.mark.parametrize("case", ["list", "settings-list", "steps-text", "width-list", "clip-text", "prompt-number",
                                  "losses-list", "lr-nan", "options-list", "not-json", "deep", "seed-huge"])
def test_from_png_with_malformed_metadata(case, bad_pngs, tmp_path, capsys):
    assert_one_line(["generate", "--from", bad_pngs[case], "-o", tmp_path / "o.png", "--quiet"], capsys)
    assert not (tmp_path / "o.png").exists()


GENERATE_CASES = [
    (["--seed", 10**30], "seed must be between"),
    (["--seed", 2**63 - 1, "--candidates", 2], "seed must be between"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "device 'cuda"),
    (["--device", "tpu9"], "unknown device"),
    (["--lr", "1e38"], "lr must be between"),
    (["--lr", "nan"], "must be a finite number"),
    (["--lr", "-1"], "lr must be between"),
    (["--cut-pow", "inf"], "must be a finite number"),
    (["--cut-min", "0"], "cut-min must be between"),
    (["--cutn", "0"], "cutn must be between"),
    (["--warmup", "-1"], "warmup must be between"),
    (["--tv", "nan"], "must be a finite number"),
    (["--loss", "tv=1e300"], "weight of loss 'tv'"),
    (["--gen-opt", "parametrization=nan"], "must be a finite number"),
    (["--loss", "sds=1", "--loss-opt", "sds.model=no-such-model"], "no-such-model"),
    (["--save-every", "-1"], "--save-every must be"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be"),
    (["--keep", "3"], "--keep must be"),
    (["--checkpoint", "/no/such/folder/run.pt"], "does not exist"),
    (["--weights-dir", "/no/such/folder"], "weights folder not found"),
]


@pytest.mark.parametrize("extra, match", GENERATE_CASES)
def test_generate_bad_settings_are_one_line(extra, match, tmp_path, tiny_clip, capsys):
    out = tmp_path / "o.png"
    assert_one_line(["generate", "a red circle", "--clip", tiny_clip, *FAST, *extra, "-o", out], capsys, match)
    assert not out.exists()


def test_unbounded_prompt_weight_is_refused(tmp_path, tiny_clip, capsys):
    assert_one_line(["generate", "cat:1e300", "--clip", tiny_clip, *FAST, "-o", tmp_path / "o.png"], capsys,
                    "prompt weight")


def test_a_run_whose_every_step_was_skipped_fails(tmp_path, tiny_clip, capsys, monkeypatch):
    from clipstudio.studio import Studio

    monkeypatch.setattr(Studio, "_objective",
                        lambda self, *a, **k: (torch.full((1,), float("inf")), {"clip": torch.full((1,), float("inf"))}))
    out = tmp_path / "o.png"
    assert_one_line(["generate", "cat", "--clip", tiny_clip, *FAST, "-o", out], capsys, "steps were skipped")
    assert not out.exists()


@pytest.mark.parametrize("repeat", [0, -3])
def test_bench_repeat_must_be_positive(repeat, tiny_clip, capsys):
    assert_one_line(["bench", "--clip", tiny_clip, *FAST, "--repeat", repeat], capsys, "--repeat")


@pytest.mark.parametrize("flag", [["--breakdown"], ["--kornia-baseline"], ["--preset", "classic"]])
def test_bench_generate_flags_are_refused_for_the_diffuse_backend(flag, capsys):
    assert_one_line(["bench", "--backend", "diffuse", *flag], capsys, f"{flag[0]} times generate's step")


def _run_state(tmp_path, tiny_clip, capsys) -> tuple[Path, list]:
    ckpt, out = tmp_path / "run.pt", tmp_path / "o.png"
    argv = ["generate", "a red circle", "--clip", tiny_clip, *FAST, "--checkpoint", ckpt, "-o", out]
    assert run(argv, capsys)[0] == 0
    return ckpt, argv


@pytest.mark.parametrize("damage, match", [
    (lambda s: s.pop("optimizer"), "lacks optimizer"),
    (lambda s: s.update(rng=torch.zeros(3, dtype=torch.uint8)), "RNG state is unusable"),
    (lambda s: s.update(rng="not a tensor"), "RNG state is not a CPU RNG state"),
    (lambda s: s.update(step=-5), "step counts are impossible"),
    (lambda s: s.update(skipped=10**9), "step counts are impossible"),
    (lambda s: s.update(history=["x"]), "loss history"),
    (lambda s: s["generator"].clear(), "does not fit this run"),
])
def test_damaged_run_checkpoint_is_one_line(damage, match, tmp_path, tiny_clip, capsys):
    ckpt, argv = _run_state(tmp_path, tiny_clip, capsys)
    state = torch.load(ckpt, weights_only=True)
    damage(state)
    torch.save(state, ckpt)
    assert_one_line(argv, capsys, match)


def test_training_bad_numbers_and_missing_init(tmp_path, capsys):
    for argv, match in [
        (["train", "clip", "--lr", "nan", "--steps", 1, "--batch", 2, "--out", tmp_path / "c.pt"], "--lr must be"),
        (["train", "clip", "--lr", "1e38", "--steps", 1, "--batch", 2, "--out", tmp_path / "c.pt"], "--lr must be"),
        (["train", "diffusion", "--lr", "nan", "--steps", 1, "--out", tmp_path / "d.pt"], "--lr must be"),
        (["train", "reward", "--lr", "nan", "--steps", 1, "--out", tmp_path / "r.pt"], "--lr must be"),
        (["train", "reward", "--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "r.pt"],
         "no diffusion checkpoint at"),
        (["train", "clip", "--init", tmp_path / "none.pt", "--steps", 1, "--batch", 2, "--out", tmp_path / "c.pt"],
         "no checkpoint at"),
    ]:
        assert_one_line(argv, capsys, match)
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "d.pt").exists()
    assert not (tmp_path / "r.pt").exists()


def test_corrupt_model_config_json_is_one_line(tmp_path, tiny_clip, capsys, monkeypatch):
    import clipstudio.guide.clip as clip_module

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "broken.json").write_text("{not json")
    monkeypatch.setenv("CLIPSTUDIO_MODEL_CONFIGS", str(folder))
    clip_module._register_configs.cache_clear()
    try:
        assert_one_line(["generate", "x", "--clip", tiny_clip, *FAST, "-o", tmp_path / "o.png"], capsys,
                        "corrupt CLIP model config")
    finally:
        monkeypatch.undo()
        clip_module._register_configs.cache_clear()


@pytest.mark.parametrize("content", ["{broken", "[]", '{"name": "w", "clip": [1]}', '{"name": "w", "clip": {"m": 1}}'])
def test_corrupt_world_json_is_one_line(content, tmp_path, monkeypatch):
    from clipstudio import embedded

    (tmp_path / "world.json").write_text(content)
    monkeypatch.setenv("CLIPSTUDIO_WORLDS", str(tmp_path))
    embedded.worlds.cache_clear()
    try:
        with pytest.raises(ClipstudioError) as info:
            embedded.worlds()
        assert "\n" not in str(info.value)
    finally:
        monkeypatch.undo()
        embedded.worlds.cache_clear()


def test_read_only_home_is_one_line(tmp_path, capsys, monkeypatch):
    """A CLIPSTUDIO_HOME the process cannot write (simulated: tests may run as root, who writes anywhere)."""
    home = tmp_path / "home"
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(home))
    monkeypatch.delenv("CLIPSTUDIO_OFFLINE", raising=False)
    monkeypatch.delenv("CLIPSTUDIO_WEIGHTS", raising=False)

    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    line = assert_one_line(["weights", "taef2.encoder"], capsys, "Permission denied")
    assert str(home) in line


@pytest.mark.parametrize("value,kwargs,message", [
    ("lots", {}, "x must be a number, got 'lots'"),
    ("inf", {}, "x must be finite, got 'inf'"),
    ("nan", {}, "x must be finite, got 'nan'"),
    (1e400, {"cast": int}, "x must be a number"),         # OverflowError, not a traceback
    ("1.5", {"cast": int}, "x must be a number"),
    (2, {"low": 0, "high": 1}, "x must be in [0, 1], got 2"),
])
def test_option_number_refuses_in_one_line(value, kwargs, message):
    from clipstudio.errors import ClipstudioError, option_number
    with pytest.raises(ClipstudioError) as info:
        option_number(value, "x", **kwargs)
    assert str(info.value) == message or message in str(info.value)


def test_option_number_reads_strings_and_numbers():
    from clipstudio.errors import option_number
    assert option_number("0.25", "x") == 0.25 and option_number(3, "x", cast=int, low=1, high=3) == 3
