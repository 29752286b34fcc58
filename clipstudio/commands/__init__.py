"""Subcommands: one module each, with ``register(subparsers)`` (which sets ``run`` as the parser's default)
and ``run(args) -> int``. The CLI builds its parser from :data:`COMMANDS` and has one error path. Commands are
the only layer that imports ``train/``, recipes and worlds by name."""
from __future__ import annotations

import importlib

COMMANDS = ("generate", "recipe", "animate", "rank", "batch", "live", "bench", "models", "weights", "diffuse",
            "compare", "train", "eval", "demo")


def command_modules():
    """The command modules, in the order ``--help`` lists them."""
    return [importlib.import_module(f"{__name__}.{name}") for name in COMMANDS]
