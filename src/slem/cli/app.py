"""Entry point: ``slem``. Sub-command groups live in their own modules."""

from __future__ import annotations

from typing import Annotated

import typer

from slem import __version__
from slem.cli import (
    bbo_cmd,
    data_cmd,
    fewshot_cmd,
    hpo_cmd,
    meta_train_cmd,
    nas_cmd,
    predict_cmd,
    train_cmd,
    zoo_cmd,
)
from slem.cli.console import err_console

app = typer.Typer(
    name="slem",
    help="Simulating learning methodology: learn the rules that set the learning process.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(bbo_cmd.app, name="bbo")
app.add_typer(fewshot_cmd.app, name="fewshot")
app.add_typer(nas_cmd.app, name="nas")
app.add_typer(zoo_cmd.app, name="zoo")
train_cmd.register(app)
predict_cmd.register(app)
hpo_cmd.register(app)
meta_train_cmd.register(app)
predict_cmd.register(app)


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
    """Run the CLI; a usage error (an unknown option, a value of the wrong type, a missing
    argument) is one line ``error: ...`` naming the command's --help, exit code 2, like every
    other bad input."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click's (or typer's vendored click's) usage errors
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            sys.exit(2)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(str(exc.format_message()).split())
        err_console.print(f"error: {message}{where}", soft_wrap=True)
        sys.exit(int(exc.exit_code))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
