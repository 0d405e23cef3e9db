"""Shared rich consoles, the user-error convention of every command, and the thread setting.

A command decorated with :func:`user_errors` turns a :class:`SlemError` into one line
``error: <message>`` on stderr and exit code 2 (the same code as a usage error).

Both consoles print text *literally*: markup is off, so a path, a column name or a value
that holds ``[...]`` is shown as it is and can never crash the printer. Style is added with
:func:`styled` (a :class:`rich.text.Text`), never by formatting user text into markup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from slem.errors import SlemError
from slem.train.threads import set_threads

__all__ = ["ThreadsOption", "console", "err_console", "set_threads", "styled", "user_errors"]

console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="CPU threads torch may use (default: min(4, available cores), or "
        "OMP_NUM_THREADS when set). Set 1-2 on a shared machine.",
    ),
]


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain strings and ``(text, style)`` pairs; no part is parsed as markup."""
    return Text.assemble(*parts)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SlemError as exc:
            err_console.print(styled(("error:", "bold red"), " ", str(exc)))
            raise typer.Exit(code=2) from None

    return wrapper
