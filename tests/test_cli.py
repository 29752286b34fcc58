"""The command line: PNG metadata and --from, atomic output, and one-line errors for bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipstudio import images
from clipstudio.cli import main


@pytest.fixture
def fast_args(tiny_clip):
    return ["--clip", tiny_clip, "--size", "32", "24", "--steps", "2", "--cutn", "2", "--quiet", "--generator", "pixels",
            "--candidates", "1"]


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_png_with_settings(tmp_path, fast_args, capsys):
    out = tmp_path / "out.png"
    code, stdout, _ = run_cli(["generate", "a red circle:2", "-o", str(out), "--seed", "5", *fast_args], capsys)
    assert code == 0 and "wrote" in stdout
    meta = images.read_png_settings(out)
    assert meta["settings"]["prompt"] == "a red circle:2" and meta["settings"]["seed"] == 5
    assert meta["settings"]["width"] == 32 and meta["settings"]["height"] == 24
    assert Image.open(out).size == (32, 24)


def test_from_png_reruns_the_same_settings(tmp_path, fast_args, capsys):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    assert run_cli(["generate", "a blue square", "-o", str(first), *fast_args], capsys)[0] == 0
    assert run_cli(["generate", "--from", str(first), "-o", str(second), "--quiet"], capsys)[0] == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert images.read_png_settings(first)["settings"] == images.read_png_settings(second)["settings"]


def test_frames_are_saved_every_n_steps(tmp_path, fast_args, capsys):
    out = tmp_path / "out.png"
    assert run_cli(["generate", "a red circle", "-o", str(out), *fast_args, "--save-every", "1"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out_frames").iterdir()) == ["00001.png", "00002.png"]


def test_failed_write_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "keep.png"
    out.write_bytes(b"old contents")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(images.ClipstudioError, match="No space left"):
        images.save_png(Image.new("RGB", (4, 4)), out)
    assert out.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["keep.png"]


BAD_INPUTS = [
    (["generate", "x", "--generator", "nope"], "unknown generator 'nope'"),
    (["generate", "x", "--clip", "NoSuchCLIP"], "unknown CLIP model"),
    (["generate", "x", "--augment", "nope"], "unknown augment 'nope'"),
    (["generate", "x:abc"], "malformed prompt weight"),
    (["generate", "x", "--init-image", "/no/such.png"], "image not found"),
    (["generate", "x", "--image-prompt", "/no/such.png"], "image not found"),
    (["generate", "x", "-o", "/no/such/dir/out.png"], "does not exist"),
    (["generate", "x", "--size", "0", "0"], "size must be"),
    (["generate", "x", "--steps", "-3"], "steps must be"),
    (["generate", "--from", "/no/such.png"], "image not found"),
    (["generate", "x", "--candidates", "3", "--save-every", "1"], "add --candidates 1"),
    (["generate", "x", "--candidates", "0"], "candidates must be"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS)
def test_bad_input_is_one_line(argv, message, tiny_clip, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "--clip" not in argv:
        argv = [*argv, "--clip", tiny_clip, "--steps" if "--steps" not in argv else "--seed", "1", "--quiet"]
    code, _, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if not line.startswith("clipstudio: warning")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out.png").exists()


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    code, _, err = run_cli(["generate", "x", "--clip", f"clipstudio-test-tiny:{bad}", "-o", str(tmp_path / "o.png")],
                           capsys)
    assert code == 2 and "could not load CLIP checkpoint" in err and len(err.strip().splitlines()) == 1


def test_unwritable_output_fails_before_work(tmp_path, fast_args, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        code, _, err = run_cli(["generate", "x", "-o", str(locked / "o.png"), *fast_args], capsys)
        assert code == 2 and "cannot write output" in err
    finally:
        locked.chmod(0o700)


def test_output_that_is_a_directory_is_refused(tmp_path, fast_args, capsys):
    code, _, err = run_cli(["generate", "x", "-o", str(tmp_path), *fast_args], capsys)
    assert code == 2 and "is a directory" in err


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "clipstudio.cli", "generate", "x", "--generator", "nope"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown generator" in proc.stderr


def test_models_lists_everything(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0
    for word in ("pixels", "vqgan", "latent", "shapes-guide", "perceptual", "affine"):
        assert word in out


def test_bench_reports_seconds_per_step(fast_args, capsys):
    code, out, _ = run_cli(["bench", *fast_args, "--repeat", "2"], capsys)
    assert code == 0 and "step_s" in out and "overhead" in out


def test_ranking_keeps_the_best_candidates(tmp_path, fast_args, capsys):
    out = tmp_path / "best.png"
    code, stdout, _ = run_cli(["generate", "a red circle", "-o", str(out), *fast_args,
                               "--candidates", "3", "--keep", "2"], capsys)
    assert code == 0
    written = sorted(p.name for p in tmp_path.glob("best-*.png"))
    assert written == ["best-1.png", "best-2.png"]
    scores = [float(line.split("CLIP score ")[1].split(",")[0]) for line in stdout.splitlines()]
    assert scores == sorted(scores, reverse=True)
    seeds = {images.read_png_settings(tmp_path / name)["settings"]["seed"] for name in written}
    assert len(seeds) == 2 and seeds <= {0, 1, 2}


def test_weights_lists_and_fails_offline_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path))
    code, out, _ = run_cli(["weights"], capsys)
    assert code == 0 and "taef2.decoder" in out and "vqgan_imagenet_f16_16384.ckpt" in out
    code, _, err = run_cli(["weights", "taesd.decoder", "--weights-dir", str(tmp_path)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "taesd_decoder.pth" in err


@pytest.mark.parametrize("trainer", ["clip", "robust", "diffusion", "reward"])
def test_every_trainer_takes_the_same_progress_and_threads_options(trainer):
    from clipstudio.cli import parse_command_line

    for flag in ("--quiet", "--no-progress"):
        args = parse_command_line(["train", trainer, flag, "--threads", "1"])
        assert args.quiet is True and args.threads == 1
    assert parse_command_line(["train", trainer]).quiet is False
