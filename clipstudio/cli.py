"""The ``clipstudio`` command: builds its parser from :mod:`clipstudio.commands` and has one error path
(a :class:`ClipstudioError` is one line on stderr and exit code 2, never a traceback)."""
from __future__ import annotations

import argparse
import sys
import warnings

from .commands import command_modules
from .errors import ClipstudioError
from .resources import keep_freed_memory

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipstudio", description="CLIP-guided image generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in command_modules():
        module.register(sub)
    return parser


def _one_line_warnings() -> None:
    warnings.formatwarning = lambda message, category, *a, **k: f"clipstudio: warning: {message}\n"
    # Deprecation chatter from dependencies (lpips calls torchvision the old way) is not the user's business.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\..*")


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """Parse a command line as :func:`main` does, without running it (argparse exits 2 on a bad one)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and not any(item.startswith("-") for item in rest):
        args.overrides = [*args.overrides, *rest]  # KEY=VALUE pairs given after an option (animate, recipe run)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _one_line_warnings()
    keep_freed_memory()  # the CLI owns its process: steps reuse freed pages instead of faulting in new ones
    args = parse_command_line(argv)
    try:
        return int(args.run(args) or 0)
    except ClipstudioError as err:
        print(f"clipstudio: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clipstudio: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # the run's estimate passed but the machine disagreed (other processes grew)
        print("clipstudio: error: out of memory; lower --size or --cutn", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the environment, not the code: a read-only folder, a full disk, a lost mount
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"clipstudio: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
