"""Model cards of the zoo: the fields of ``card.json``, its one-row summary and its README.

``card.json`` holds the facts of an entry; ``README.md`` and the rows of ``slem zoo list`` and
of the docs' table (``docs/zoo.md``) are rendered from it here, so each fact has one place.
This module uses only the standard library (``benchmarks/report.py`` loads it by its path to
render the docs without importing slem).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: every card has these fields (``benchmarks/zoo_build.py`` writes them)
REQUIRED = (
    "name",
    "purpose",
    "description",
    "kind",
    "methodology_config",
    "inputs",
    "weights",
    "family",
    "distinct_tasks",
    "episodes",
    "meta_steps",
    "tasks_per_step",
    "meta_training_seconds",
    "seed",
    "applies_with",
    "held_out",
    "slem_version",
    "torch_version",
    "rebuild",
)
#: the columns of ``slem zoo list`` and of the docs' table, in order
COLUMNS = ("name", "for", "kind", "family", "tasks / episodes", "held-out result", "size")
NOT_MEASURED = "not measured yet"

__all__ = [
    "COLUMNS",
    "NOT_MEASURED",
    "REQUIRED",
    "family_text",
    "held_out_text",
    "kind_text",
    "markdown_table",
    "missing_fields",
    "render_markdown",
    "size_text",
    "summary_row",
]


def missing_fields(card: Mapping[str, Any]) -> list[str]:
    """The :data:`REQUIRED` fields ``card`` lacks."""
    return [key for key in REQUIRED if key not in card]


def _choice(value: Any) -> str:
    if value in (None, "none"):
        return "clean"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choices(values: list[Any]) -> str:
    return ", ".join(_choice(v) for v in values)


def family_text(family: Mapping[str, Any]) -> str:
    """The task family in one line, e.g. ``mnist1d, wine; noise symmetric:0.4, clean;
    imbalance 1, 10; 10 meta samples per class``."""
    parts = [", ".join(family.get("datasets", []))]
    parts.append("noise " + _choices(list(family.get("noise", [None]))))
    parts.append("imbalance " + _choices(list(family.get("imbalance", [1]))))
    sizes = [s for s in family.get("size", [None]) if s is not None]
    if sizes:
        parts.append("pool sizes " + ", ".join(str(s) for s in sizes))
    per_class = family.get("meta_per_class")
    parts.append(
        f"{per_class} clean meta samples per class" if per_class else "no meta set (DAC-MR)"
    )
    return "; ".join(parts)


def kind_text(card: Mapping[str, Any]) -> str:
    """The kind, with ``monotone`` when the artifact's config says so."""
    config = card.get("methodology_config") or {}
    return card["kind"] + (" (monotone)" if config.get("monotone") else "")


def size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1024:.1f} KiB" if n_bytes >= 1024 else f"{n_bytes} B"


def held_out_text(card: Mapping[str, Any]) -> str:
    """The held-out result's headline, or :data:`NOT_MEASURED`."""
    held = card.get("held_out") or {}
    return str(held.get("headline") or NOT_MEASURED)


def summary_row(card: Mapping[str, Any]) -> dict[str, str]:
    """One row of the zoo's table (:data:`COLUMNS` -> text)."""
    episodes = card["episodes"]
    return {
        "name": card["name"],
        "for": card["purpose"],
        "kind": kind_text(card),
        "family": family_text(card["family"]),
        "tasks / episodes": f"{card['distinct_tasks']} / {episodes['finished']}",
        "held-out result": held_out_text(card),
        "size": size_text(int(card["weights"]["bytes"])),
    }


def markdown_table(cards: list[Mapping[str, Any]]) -> str:
    """The zoo's entries as a Markdown table (the docs page's)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for c in cards:
        row = summary_row(c)
        cells = [f"`zoo:{row['name']}`", *(row[k] for k in COLUMNS[1:])]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def _threads(card: Mapping[str, Any]) -> str:
    n = card.get("build_threads")
    return f" on {n} CPU thread{'' if n == 1 else 's'}" if n else ""


def _held_out_section(held: Mapping[str, Any]) -> list[str]:
    if not held.get("rows"):
        note = held.get("note") or NOT_MEASURED
        return [f"{note}: `python benchmarks/transfer.py` measures it on held-out tasks."]
    lines = [str(held.get("headline", "")), "", f"Source: `{held.get('source', '?')}`.", ""]
    keys = [k for k in held["rows"][0] if not isinstance(held["rows"][0][k], dict | list)]
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + "---|" * len(keys))
    for row in held["rows"]:
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append(f"{v:.4f}" if isinstance(v, float) else "–" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown (an entry's ``README.md``)."""
    name = card["name"]
    episodes = card["episodes"]
    weights = card["weights"]
    applies = card["applies_with"]
    acc = card.get("episode_test_accuracy_mean")
    lines = [
        f"# zoo:{name}",
        "",
        "<!-- generated from card.json by `python benchmarks/zoo_build.py "
        f"{name} --card-only`; edit card.json or the build, not this file -->",
        "",
        str(card["description"]),
        "",
        f"- **For:** {card['purpose']}",
        f"- **Kind:** {kind_text(card)}; inputs: {', '.join(card['inputs'])}; "
        f"config `{json.dumps(card['methodology_config'], sort_keys=True)}`",
        f"- **Weights:** `{weights['file']}`, {weights['bytes']} bytes, "
        f"sha256 `{weights['sha256']}`",
        f"- **Use:** `slem apply zoo:{name} --data my.csv --target label` (no meta set, no tuning)",
        f"- **Applied with** (the meta-training episodes' settings): {applies}",
        "",
        "## Meta-training",
        "",
        f"- **Task family:** {family_text(card['family'])}",
        f"- **Tasks:** {card['distinct_tasks']} distinct; **episodes:** {episodes['started']} "
        f"started, {episodes['finished']} finished, {card['tasks_per_step']} side by side",
        f"- **Meta steps:** {card['meta_steps']}; seed {card['seed']}; "
        f"{card['meta_training_seconds']:.0f} s of meta-training{_threads(card)}",
    ]
    if acc is not None:
        lines.append(f"- **Mean test accuracy of the finished episodes:** {acc:.3f}")
    lines += [
        "- scikit-learn's digits is reserved as held-out: never in a meta-training family.",
        "",
        "## Held-out results",
        "",
        *_held_out_section(card["held_out"]),
        "",
        "## Provenance",
        "",
        f"- slem {card['slem_version']}, torch {card['torch_version']}",
        f"- Rebuild: `{card['rebuild']}` (meta-trains on `config.yaml`; same config and seed, "
        "same weights)",
    ]
    return "\n".join(lines) + "\n"
