"""Entry point: ``slem``. Sub-command groups live in their own modules."""

from __future__ import annotations

from typing import Annotated

import typer

from slem import __version__
from slem.cli import bbo_cmd, data_cmd, hpo_cmd, train_cmd

app = typer.Typer(
    name="slem",
    help="Simulating learning methodology: learn the rules that set the learning process.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(bbo_cmd.app, name="bbo")
train_cmd.register(app)
hpo_cmd.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slem {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """slem command line."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
