"""``slem zoo``: the pretrained methodologies shipped with slem (:mod:`slem.zoo`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from slem import zoo
from slem.cli.console import console, user_errors
from slem.zoo.cards import COLUMNS, render_markdown, summary_row

app = typer.Typer(
    help="Pretrained methodologies shipped with slem: apply one with 'slem apply zoo:NAME'.",
    no_args_is_help=True,
)


@app.command("list")
@user_errors
def list_() -> None:
    """The shipped methodologies: what each is for, its family, meta-training and size."""
    from rich.table import Table
    from rich.text import Text

    rows = {name: summary_row(zoo.card(name)) for name in zoo.names()}
    if console.width < 140:  # too narrow for the table (or not a terminal): one block each
        for name, row in rows.items():
            console.print(Text(f"zoo:{name}", "bold"), soft_wrap=True)
            for column in COLUMNS[1:]:
                console.print(Text(f"    {column}: {row[column]}"), soft_wrap=True)
    else:
        table = Table(*COLUMNS)
        for name, row in rows.items():
            table.add_row(f"zoo:{name}", *(row[c] for c in COLUMNS[1:]))
        console.print(table)
    console.print(
        "show a card with: slem zoo show NAME; train with one: "
        "slem apply zoo:NAME --data my.csv --target label",
        soft_wrap=True,
    )


@app.command("show")
@user_errors
def show(
    name: Annotated[str, typer.Argument(help="An entry, e.g. label-noise (or zoo:label-noise).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print card.json (the facts) instead.")
    ] = False,
) -> None:
    """The model card of one shipped methodology."""
    card = zoo.card(name)
    if as_json:
        console.print(json.dumps(card, indent=2), soft_wrap=True)
        return
    from rich.markdown import Markdown

    text = "\n".join(
        line for line in render_markdown(card).splitlines() if not line.startswith("<!--")
    )
    console.print(Markdown(text))
    console.print(f"files: {zoo.path(name)}", soft_wrap=True)
