"""The one exception type whose message is shown to a user as a single line."""


class ClipstudioError(Exception):
    """A user-facing error: bad input, a missing file or dependency, a corrupt checkpoint.

    The CLI prints ``str(err)`` on one line and exits non-zero; it never shows a traceback.
    """


def missing_extra(package: str, extra: str, what: str) -> ClipstudioError:
    """The error raised when an optional backend's dependency is not installed."""
    return ClipstudioError(
        f"{what} needs the '{package}' package: pip install 'clipstudio[{extra}]'"
    )


def option_number(value, name: str, *, cast: type = float, low: float = float("-inf"),
                  high: float = float("inf")):
    """``cast(value)`` of a plugin option given as a number or a string (recipes and ``--set`` give either),
    finite and within [low, high]; else one line naming the option, e.g. ``name='pixels option decay'``."""
    try:
        number = cast(value)
    except (TypeError, ValueError, OverflowError):
        raise ClipstudioError(f"{name} must be a number, got {value!r}") from None
    if not (low <= number <= high) or number != number or abs(number) == float("inf"):
        bounds = f"in [{low:g}, {high:g}]" if (low, high) != (float("-inf"), float("inf")) else "finite"
        raise ClipstudioError(f"{name} must be {bounds}, got {value!r}")
    return number
