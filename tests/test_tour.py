"""README as a contract: every ``clipstudio`` line it (and docs/) shows parses with the CLI's own parser, every
picture it shows is in the repository, and each picture of the 5-minute tour was made by one of the tour's
commands (docs/make_tour.sh runs those lines as written). Parsing only: nothing runs, so this takes seconds."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from clipstudio import images
from clipstudio.cli import parse_command_line

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOUR_DIR = ROOT / "docs" / "tour"
BEGIN, END = "<!-- tour:begin -->", "<!-- tour:end -->"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```sh fenced blocks of a markdown text."""
    return re.findall(r"^```(?:sh|bash|console)\n(.*?)^```", text, flags=re.S | re.M)


def clipstudio_lines(text: str) -> list[str]:
    """The lines of the shell blocks that run clipstudio (``$ `` prompts and ``.venv/bin/`` prefixes allowed)."""
    lines = []
    for block in shell_blocks(text):
        for line in block.splitlines():
            line = re.sub(r"^(\$ |\.venv/bin/)", "", line.strip())
            if line.startswith("clipstudio "):
                lines.append(line)
    return lines


def tour_section() -> str:
    text = README.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README needs one tour:begin and one tour:end marker"
    return text.split(BEGIN, 1)[1].split(END, 1)[0]


def tour_commands() -> list[tuple[str, object]]:
    """(line, parsed arguments) for each tour command, in the order make_tour.sh runs them."""
    lines = [line for line in tour_section().splitlines() if line.startswith("clipstudio ")]
    return [(line, parse_command_line(shlex.split(line, comments=True)[1:])) for line in lines]


def pictures(text: str) -> list[str]:
    """Image paths a markdown text shows (``<img src=...>`` and ``![...](...)``), web addresses left out."""
    found = re.findall(r'<img\s[^>]*src="([^"]+)"', text) + re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text)
    return [path for path in found if not re.match(r"[a-z]+://", path)]


def output_of(args) -> str:
    return getattr(args, "output", None) or getattr(args, "out")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_command_shown_parses(page):
    lines = clipstudio_lines(page.read_text())
    if page == README:
        assert len(lines) >= 30, "README's command lines were not found"
    for line in lines:
        try:
            parse_command_line(shlex.split(line, comments=True)[1:])
        except SystemExit:
            pytest.fail(f"{page.name}: this command does not parse: {line}")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_picture_shown_is_in_the_repository(page):
    for path in pictures(page.read_text()):
        assert (page.parent / path).is_file(), f"{page.name} shows {path}, which is not in the repository"


def test_the_tour_covers_the_first_hour():
    commands = [args.command for _, args in tour_commands()]
    for command in ("generate", "diffuse", "compare", "rank", "animate"):
        assert command in commands, f"the tour lacks clipstudio {command}"
    generators = {getattr(args, "generator", None) for _, args in tour_commands() if args.command == "generate"}
    assert {"primitives", "pixels", "latent"} <= generators
    script = (ROOT / "docs" / "make_tour.sh").read_text()
    assert BEGIN in script and END in script, "make_tour.sh must read the same markers"


def test_each_tour_picture_was_made_by_a_tour_command():
    outputs = [output_of(args).rstrip("/") for _, args in tour_commands()]
    shown = pictures(tour_section())
    assert len(shown) >= 8
    for path in shown:
        assert path.startswith("docs/tour/"), f"tour picture {path} is not under docs/tour/"
        relative = path[len("docs/tour/"):]
        assert any(relative == out or relative.startswith(out + "/") for out in outputs), \
            f"no tour command writes {relative} (outputs: {outputs})"
    for out in outputs:
        assert (TOUR_DIR / out).exists(), f"docs/tour/{out} is missing: run docs/make_tour.sh"


def test_tour_pngs_record_the_settings_of_their_command():
    checked = 0
    for line, args in tour_commands():
        if args.command not in ("generate", "diffuse"):
            continue
        settings = images.read_png_settings(TOUR_DIR / args.output)["settings"]
        assert settings["prompt"] == args.prompt and settings["seed"] == args.seed, \
            f"docs/tour/{args.output} was not made by: {line}"
        if getattr(args, "generator", None):
            assert settings["generator"] == args.generator, line
        checked += 1
    assert checked >= 6


def test_tour_pictures_stay_small():
    total = sum(path.stat().st_size for path in TOUR_DIR.rglob("*") if path.is_file())
    assert 0 < total < 1_000_000, f"docs/tour holds {total} bytes; keep README's pictures under 1 MB"
