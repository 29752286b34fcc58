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
