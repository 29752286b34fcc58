"""Subcommands whose parser still lives with their code (being moved into commands/): the rest of the
command line is handed to ``module:function(argv)``."""
from __future__ import annotations

import argparse
import importlib

from ..errors import ClipstudioError, missing_extra


def register_delegated(sub: argparse._SubParsersAction, name: str, help_text: str,
                       targets: dict[str | None, str]) -> None:
    """A subcommand (with sub-subcommands when ``targets`` has names) that hands its argv to a target."""
    parser = sub.add_parser(name, help=help_text, add_help=False)
    if None not in targets:
        parser.add_argument("what", choices=sorted(targets))
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(run=lambda args: _delegate(args, name, targets))


def _delegate(args: argparse.Namespace, name: str, targets: dict[str | None, str]) -> int:
    what = None if None in targets else getattr(args, "what", None)
    module_name, func_name = targets[what].split(":")
    label = " ".join(k for k in (args.command, getattr(args, "what", None)) if k)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("clipstudio"):
            raise ClipstudioError(f"'{label}' is not available in this install") from None
        raise missing_extra(err.name or "?", "diffusion", f"'{label}'") from None
    return int(getattr(module, func_name)(args.argv) or 0)
