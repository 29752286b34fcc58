"""Property-based: random and malformed values for every option of every subcommand, and random metadata to
``--from``, give exit 0 or 2, never a traceback, no file outside the output folder, nothing half-written.

The option list is read from the CLI itself (``clipstudio.cli.build_parser``, and ``--help`` of subcommands
whose parser still lives with their code), so commands added later are covered without editing this file.
Runs stay short: the CLI runs in-process, every CLIP model is swapped for the tiny random one after its name is
checked, the free memory is taken to be 0.75 GiB (big sizes are refused at once, as on a small machine), and
an input that is still working after a few seconds counts as valid (its validation has passed).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from clipstudio import images, resources
from clipstudio.cli import build_parser, main

PACKAGE = Path(__file__).resolve().parent.parent / "clipstudio"
BUDGET_S = 2.0  # seconds an input may run before it counts as valid work
OUTPUT_OPTIONS = ("-o", "--output", "--out", "--save-dir", "--state", "--checkpoint", "--latents")


class WorkReached(BaseException):
    """Raised by the harness when an input got past validation into the work."""


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], list[str]]:
    """Every command path and its option strings, from the parser tree (and --help of delegated commands)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_subcommands(sub, prefix + (name,)))
    if prefix and not found:
        options = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
        if any(a.dest == "argv" for a in parser._actions):  # delegated: its parser lives with its code
            options = _help_options(prefix)
        found[prefix] = sorted(set(options))
    return found


def _help_options(path: tuple[str, ...]) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*path, "--help"])
        except SystemExit:
            pass
    return [s for s in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", out.getvalue()) if s not in ("-h", "--help")]


COMMANDS = _subcommands(build_parser())


def _values(work: Path) -> st.SearchStrategy[str]:
    """Random and malformed option values: numbers at and past every edge, text, paths that exist or not."""
    edge_numbers = ["0", "-1", "-3", "1", "2", "3", "nan", "inf", "-inf", "1e38", "1e300", "-1e300", "1e-320",
                    str(2**63), str(10**30), "0x10", "1_000", "", " ", "3.5", "true", "false"]
    paths = [str(work / "out.png"), str(work / "no" / "such" / "dir" / "x.png"), str(work), str(work / "fifo"),
             str(work / "file.txt"), str(work / "meta.png"), "/no/such/file.pt"]
    texts = ["a red circle", "cat:1e300", "x:abc", "a:1:2:3", "|", "k=v", "=", "a=nan", "ViT-B-32:openai",
             "clipstudio-test-tiny:random", "shapes-guide", "pixels", "vqgan", "primitives", "\x00", "é" * 5, "-"]
    curated = st.sampled_from(edge_numbers + paths + texts)
    return st.one_of(curated, curated, curated, st.integers(-10**20, 10**20).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12))


@st.composite
def command_lines(draw, work: Path) -> list[str]:
    # generate (and bench, which shares its options) hold most settings: drawn more often.
    path = draw(st.sampled_from(sorted(COMMANDS) + [("generate",)] * 4 + [("bench",)]))
    options = COMMANDS[path]
    argv = list(path)
    if draw(st.booleans()):
        argv.append(draw(_values(work)))  # a positional (a prompt, a name)
    for _ in range(draw(st.integers(0, 4))):
        if not options:
            break
        argv.append(draw(st.sampled_from(options)))
        if draw(st.integers(0, 5)):  # mostly with a value, sometimes bare
            argv.append(draw(_values(work)))
    for flag in OUTPUT_OPTIONS:  # outputs go to the work folder unless the example chose one
        if flag in options and flag not in argv and flag in ("-o", "--out", "--output"):
            argv += [flag, str(work / "result.png")]
    return argv


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _import_everything() -> None:
    """Import what the commands import lazily, so the budget's alarm never lands inside an import (a module
    interrupted half-way stays broken for the rest of the session)."""
    import importlib

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo
    for name in ("open_clip", "kornia", "diffusers", "clipstudio.studio", "clipstudio.ranking",
                 "clipstudio.diffusion.backend", "clipstudio.demos.spiral", "clipstudio.worlds.shapes.train_clip",
                 "clipstudio.worlds.shapes.train_diffusion", "clipstudio.worlds.shapes.compare",
                 "clipstudio.worlds.shapes.adherence", "clipstudio.worlds.shapes.zeroshot",
                 "clipstudio.worlds.shapes.diffusion_model", "clipstudio.generators.primitives",
                 "clipstudio.generators.pixels", "clipstudio.generators.latent", "clipstudio.generators.vqgan",
                 "clipstudio.losses.regularizers", "tqdm.auto", "matplotlib.pyplot"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: F401  (lazy attributes)


@pytest.fixture
def harness(tmp_path, monkeypatch, tiny_clip):
    """Run one command line in-process with the budget; returns (exit code, stderr)."""
    import clipstudio.guide.clip as clip_module
    import clipstudio.studio as studio_module

    _import_everything()
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(resources, "available_bytes", lambda device="cpu": 3 * resources.GIB // 4)
    real_load = clip_module.load_clip

    def tiny_load(spec, device="cpu", weights_dir=None):
        clip_module.resolve_clip_spec(spec, weights_dir)  # the name is still checked
        return real_load(tiny_clip, device)

    for module in (studio_module, clip_module):
        monkeypatch.setattr(module, "load_clip", tiny_load)
    with contextlib.suppress(ImportError):  # compare runs its halves in child processes: not in a fast test
        import clipstudio.worlds.shapes.compare as compare_module

        monkeypatch.setattr(compare_module, "run_isolated", lambda *a, **k: (_ for _ in ()).throw(WorkReached()))

    def on_alarm(signum, frame):
        raise WorkReached()

    previous, start_cwd = signal.signal(signal.SIGALRM, on_alarm), os.getcwd()
    package_before = _snapshot(PACKAGE)

    threads = torch.get_num_threads()

    def run(argv: list[str], work: Path) -> tuple[int, str]:
        err = io.StringIO()
        os.chdir(work)
        signal.setitimer(signal.ITIMER_REAL, BUDGET_S)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 2
        except WorkReached:
            code = 0
            err.write("[budget reached]\n")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            torch.set_num_threads(threads)  # a --threads of the example must not outlive it
        return code, err.getvalue()

    yield run
    signal.signal(signal.SIGALRM, previous)
    os.chdir(start_cwd)
    assert _snapshot(PACKAGE) == package_before, "a command wrote into the package"


def _fresh_work(root: Path) -> Path:
    """A new work folder holding a FIFO, a text file and a PNG with settings (targets for path options)."""
    work = root / f"w{len(list(root.iterdir()))}"
    work.mkdir()
    os.mkfifo(work / "fifo")
    (work / "file.txt").write_text("hello")
    info = PngImagePlugin.PngInfo()
    info.add_text(images.SETTINGS_KEY, json.dumps({"settings": {"prompt": "a red circle", "steps": 1}}))
    Image.new("RGB", (8, 8)).save(work / "meta.png", pnginfo=info)
    return work


def _check_outcome(argv, code, err, work: Path) -> None:
    assert code in (0, 2), f"{argv}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{argv}:\n{err}"
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 0 or errors, f"{argv}: exit 2 without a message\n{err}"
    assert stat.S_ISFIFO((work / "fifo").lstat().st_mode), f"{argv}: replaced a FIFO"
    leftovers = [p.name for p in work.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"{argv}: half-written files {leftovers}"


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_options_of_every_subcommand(harness, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("prop")
    work = _fresh_work(root)
    argv = data.draw(command_lines(work))
    code, err = harness(argv, work)
    if os.environ.get("PROP_LOG"):
        with open(os.environ["PROP_LOG"], "a") as log:
            log.write(json.dumps([argv, code, err.strip().splitlines()[-1:] if err.strip() else []]) + "\n")
    _check_outcome(argv, code, err, work)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
SETTING_NAMES = ["prompt", "steps", "width", "height", "seed", "lr", "clip", "generator", "generator_options",
                 "losses", "loss_options", "cutn", "cut_min", "init_image", "device", "candidates", "search",
                 "layout", "layout_options", "tv", "perceptual_net", "weights_dir", "negative", "augments"]


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(metadata=st.one_of(JSON, st.fixed_dictionaries(
    {"settings": st.dictionaries(st.sampled_from(SETTING_NAMES), JSON, max_size=4).map(
        lambda d: {"prompt": "a red circle", "clip": ["clipstudio-test-tiny:random"], "steps": 1, "width": 16, "height": 16, "cutn": 2, **d})})))
def test_random_metadata_to_from(harness, tmp_path_factory, metadata):
    root = tmp_path_factory.mktemp("meta")
    work = _fresh_work(root)
    png = work / "in.png"
    info = PngImagePlugin.PngInfo()
    info.add_text(images.SETTINGS_KEY, json.dumps(metadata))
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    argv = ["generate", "--from", str(png), "-o", str(work / "result.png"), "--quiet"]
    code, err = harness(argv, work)
    _check_outcome(argv, code, err, work)
    if code != 0:
        assert not (work / "result.png").exists()


def test_the_option_list_covers_every_subcommand():
    assert ("generate",) in COMMANDS and "--lr" in COMMANDS[("generate",)]
    assert all(len(path) >= 1 for path in COMMANDS)
    assert any(len(path) == 2 for path in COMMANDS)  # grouped commands (train clip, eval ...) are reached
