"""Shared rich consoles and the user-error convention of every command.

A command decorated with :func:`user_errors` turns a :class:`SlemError` into one line
``error: <message>`` on stderr and exit code 2 (the same code as a usage error).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from slem.errors import SlemError

console = Console()
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SlemError as exc:
            err_console.print(
                f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True
            )
            raise typer.Exit(code=2) from None

    return wrapper
