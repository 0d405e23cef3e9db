"""The one exception type users see.

Every problem caused by user input (a config field, a data file, a CLI argument) is raised as
a :class:`SlemError` whose message is a single line that names what is wrong and how to fix
it. The CLI prints that line and exits with code 2; library users can catch it like any
``ValueError``.
"""

from __future__ import annotations


class SlemError(ValueError):
    """A user-facing error with a one-line, actionable message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class DataNotFoundError(SlemError, FileNotFoundError):
    """A dataset's files are missing; the message says how to get them."""


def validation_message(exc: object, prefix: str = "") -> str:
    """One line from a pydantic ``ValidationError``: the field path, the problem, the input."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, SlemError) and not err["loc"]:  # already one line, e.g. a
            parts.append(str(inner))  # model's own __init__ refusing (TrainConfig)
            continue
        loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        shown = (
            f" (got {given!r})" if err["type"] != "missing" and not isinstance(given, dict) else ""
        )
        parts.append(f"{loc or 'config'}: {msg}{shown}")
    return "; ".join(parts)
