"""Command-line options derived from config dataclasses, so each default and choice is written once.

Options made here default to ``argparse.SUPPRESS``: only what a user typed reaches the settings, on top of a
recipe's or a ``--from`` image's. :func:`typed_settings` reads them back by field name.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

S = argparse.SUPPRESS


def scalar(text: str) -> Any:
    """``KEY=VALUE`` values: ints, floats and booleans become themselves, the rest stays text."""
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def key_value(text: str) -> tuple[str, Any]:
    """An argparse type for ``KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, scalar(value)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, *, helps: dict[str, str] | None = None,
                          flags: dict[str, str] | None = None, choices: dict[str, Any] | None = None,
                          skip: tuple[str, ...] = (), types: dict[str, type] | None = None) -> None:
    """An option for every scalar or list field of ``cls``: ``--field-name`` (``flags`` renames one), typed
    by the field's default (or by ``types``, for fields whose default is None), ``choices`` where given; list
    fields repeat (``--clip A --clip B``). Mapping fields are left to the command, which knows their syntax."""
    helps, flags, choices, types = helps or {}, flags or {}, choices or {}, types or {}
    for field in dataclasses.fields(cls):
        default = _field_default(field)
        if field.name in skip or isinstance(default, dict):
            continue
        flag = "--" + flags.get(field.name, field.name.replace("_", "-"))
        text = helps.get(field.name, "")
        shown = f"{text} (default: {default})" if text else f"default: {default}"
        kwargs: dict[str, Any] = {"dest": field.name, "default": S, "help": shown}
        if field.name in choices:
            kwargs["choices"] = list(choices[field.name])
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kwargs["action"] = "append"
        elif isinstance(default, (int, float)):
            kwargs["type"] = type(default)
        elif field.name in types and types[field.name] is not str:
            kwargs["type"] = types[field.name]
        parser.add_argument(flag, **kwargs)


def typed_settings(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` a user typed on the command line."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``, the same option with the same default for every command that runs torch on the CPU."""
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: 0, torch's own choice)")


def add_trainer_parser(sub: argparse._SubParsersAction, name: str, cls: type, *, help: str, description: str,
                       helps: dict[str, str], run: Any, **options: Any) -> argparse.ArgumentParser:
    """The parser of one ``clipstudio train NAME`` command: an option per field of its config dataclass ``cls``
    (``options`` go to :func:`add_dataclass_options`), ``--threads``, and ``--quiet`` (alias ``--no-progress``)
    for no progress bar, the same in every trainer."""
    parser = sub.add_parser(name, help=help, description=description)
    add_dataclass_options(parser, cls, helps=helps, **options)
    add_threads_option(parser)
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def apply_threads(n: int) -> None:
    """Set torch's CPU thread count from ``--threads`` (0: leave torch's default); negative is an error."""
    from ..errors import ClipstudioError

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ClipstudioError(f"--threads must be 0 (torch's default) or a positive integer, got {n!r}")
    if n:
        import torch

        torch.set_num_threads(n)


def command_line(command: str, settings: dict) -> str:
    """The shell command ``clipstudio COMMAND`` with these typed settings, which reruns them (a model card
    records it). Booleans become ``--flag``/``--no-flag``, lists one ``--flag item`` per item."""
    import shlex
    words = ["clipstudio", *command.split()]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)
