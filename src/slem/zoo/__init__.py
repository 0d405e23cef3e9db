"""The zoo: pretrained methodologies shipped inside the package, applied by name.

Each entry is a directory ``slem/zoo/NAME/`` holding a methodology artifact
(``methodology.safetensors`` + ``methodology.json``, as :func:`slem.methodology.load_methodology`
reads it), its model card (``card.json``, the facts; ``README.md``, the card rendered for
humans by :func:`slem.zoo.cards.render_markdown`) and the ``slem meta-train`` config that
built it (``config.yaml``; ``python benchmarks/zoo_build.py NAME`` rebuilds the entry).

Wherever slem accepts a methodology path it accepts ``zoo:NAME``: ``slem apply zoo:NAME``,
``methodology: zoo:NAME`` in a train config, ``load_methodology("zoo:NAME")``. A new entry is
one more directory: nothing here lists the entries or knows their kinds.

This module imports no slem layer (only :mod:`slem.errors`), so the methodology loader and the
train config can both resolve names through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slem.errors import SlemError

#: the prefix that names a zoo entry where a methodology path is expected
PREFIX = "zoo:"
#: the directory holding the entries (one sub-directory each)
ZOO_DIR = Path(__file__).resolve().parent
CARD_FILE = "card.json"
CONFIG_FILE = "config.yaml"
README_FILE = "README.md"

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "PREFIX",
    "README_FILE",
    "ZOO_DIR",
    "card",
    "is_zoo",
    "name_of",
    "names",
    "path",
    "resolve",
]


def names() -> list[str]:
    """The shipped entries' names, sorted (each a directory with an artifact and a card)."""
    return sorted(
        p.name
        for p in ZOO_DIR.iterdir()
        if p.is_dir() and (p / "methodology.json").is_file() and (p / CARD_FILE).is_file()
    )


def is_zoo(spec: str | Path) -> bool:
    """``spec`` names a zoo entry (``zoo:NAME``), not a path."""
    return str(spec).startswith(PREFIX)


def name_of(spec: str | Path) -> str:
    """``NAME`` of ``zoo:NAME`` (or of a bare name)."""
    text = str(spec)
    return text[len(PREFIX) :] if text.startswith(PREFIX) else text


def path(name: str) -> Path:
    """The artifact directory of entry ``name`` (``zoo:`` prefix optional).

    Raises:
        SlemError: no such entry (one line listing the available names).
    """
    bare = name_of(name).strip("/")
    available = names()
    if bare not in available:
        listed = ", ".join(f"zoo:{n}" for n in available) or "none"
        raise SlemError(f"unknown zoo methodology 'zoo:{bare}'; available: {listed}")
    return ZOO_DIR / bare


def resolve(spec: str | Path) -> Path:
    """The directory ``spec`` names: a zoo entry's for ``zoo:NAME``, else ``spec`` itself.

    Raises:
        SlemError: ``zoo:NAME`` with an unknown NAME.
    """
    return path(str(spec)) if is_zoo(spec) else Path(spec)


def card(name: str) -> dict[str, Any]:
    """The model card of entry ``name`` (``card.json``): what it is for, its kind and
    inputs, the task family and amount of meta-training, the held-out results, the slem
    version and the command that rebuilds it.

    Raises:
        SlemError: no such entry, or its card is not a JSON object.
    """
    file = path(name) / CARD_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlemError(f"{file} is damaged ({type(exc).__name__}); reinstall slem") from None
    if not isinstance(data, dict):
        raise SlemError(f"{file} is damaged (not a JSON object); reinstall slem")
    return data
