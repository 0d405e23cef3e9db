"""PNG plots of learned loss settings and model adjustments: the loss adjuster's
hyperparameters against the logit margin, and transition matrices against the true one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slem.report.figure import integer_ticks, legend_below, line, new_figure, save_figure


def head_labels(info: Mapping[str, Any], heads: int) -> tuple[list[tuple[int, str]], str | None]:
    """The heads of a class-aware net (``heads``: its number of class-group heads) that the
    task's classes use, each with its legend label, and a note naming the heads no class uses
    (None when every head is used), from a record's ``info`` (``class_groups``,
    ``class_counts``, ``class_names``). A class of size group g uses head ``min(g, heads - 1)``.
    A label reads ``group 0: classes 0, 3, 7 (n=1200)`` (n: training samples with those
    observed labels), or ``all 10 classes (n=...)`` when one head serves every class."""
    groups = [int(g) for g in info.get("class_groups") or []]
    if not groups:
        return [(h, f"class group {h}" if heads > 1 else "all classes") for h in range(heads)], None
    counts = list(info.get("class_counts") or [0] * len(groups))
    names = [str(n) for n in info.get("class_names") or range(len(groups))]
    by_head: dict[int, list[int]] = {}
    for c, g in enumerate(groups):
        by_head.setdefault(min(g, heads - 1), []).append(c)
    labels = []
    for h in sorted(by_head):
        members = by_head[h]
        n = sum(int(counts[c]) for c in members)
        if len(by_head) == 1:
            labels.append((h, f"all {len(members)} classes (n={n})"))
            continue
        shown = [_short(names[c]) for c in members[:6]]
        more = f", +{len(members) - 6} more" if len(members) > 6 else ""
        word = "class" if len(members) == 1 else "classes"
        labels.append((h, f"group {h}: {word} {', '.join(shown)}{more} (n={n})"))
    unused = [h for h in range(heads) if h not in by_head]
    if not unused:
        return labels, None
    task_groups = max(groups) + 1
    plural = "s" if len(unused) > 1 else ""
    note = (
        f"group{plural} {', '.join(str(h) for h in unused)} empty: no class has that size\n"
        f"(the task's class sizes form {task_groups} group{'s' if task_groups > 1 else ''}; "
        f"meta.n_groups = {heads})"
    )
    return labels, note


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def adjuster_curves(
    margin: np.ndarray,
    values: np.ndarray,
    names: Sequence[str],
    family: str,
    path: Path,
    info: Mapping[str, Any] | None = None,
    title: str = "",
) -> Path:
    """Each of the loss adjuster's hyperparameters against the logit ``margin`` (n,), one
    curve per head the task's classes use: ``values`` is (n_heads, n, len(names)), one slice
    per class-group head of the adjuster; ``info`` (a record's) names each head's classes
    (:func:`head_labels`), and the legend's title the heads no class uses (not drawn). The
    loss fed with a margin m is ``softplus(-m)``, the cross-entropy when one rival class holds
    the rest of the probability."""
    used, empty = head_labels(info or {}, len(values))
    fig, axes = new_figure(1, len(names), figsize=(max(6.4, 5.2 * len(names)), 5.4), squeeze=False)
    for head, label in used:
        for j in range(len(names)):
            line(axes[0, j], margin, values[head][:, j], label=label)
    for j, name in enumerate(names):
        ax = axes[0, j]
        ax.set_title(f"learned {family.upper()} {name}")
        ax.set_xlabel(
            "logit margin z_y - max other logit\n(< 0: the model disagrees with the label)"
        )
        ax.set_ylabel(f"{family.upper()} {name} (loss parameter)")
    legend_below(fig, axes[0, 0], empty)
    fig.suptitle((f"{title}: " if title else "") + "loss adjuster's parameters against the margin")
    return save_figure(fig, path)


def transition_heatmaps(
    predicted: Mapping[str, np.ndarray], true: np.ndarray, path: Path, title: str = ""
) -> Path:
    """The true transition matrix next to each predicted one (rows: clean class, columns:
    observed label), with the mean total-variation error in each title."""
    panels = [("true", true), *predicted.items()]
    fig, axes = new_figure(1, len(panels), figsize=(4.4 * len(panels) + 1, 4.2), squeeze=False)
    im = None
    for ax, (name, matrix) in zip(axes[0], panels, strict=True):
        im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        if name != "true":
            err = float(np.abs(matrix - true).sum(1).mean() / 2)
            name = f"{name}\nmean TV error {err:.3f}"
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("observed label")
        ax.set_ylabel("clean class")
        integer_ticks(ax, "x")
        integer_ticks(ax, "y")
    bar = fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    bar.set_label("P(observed label | clean class)")
    fig.suptitle((f"{title}: " if title else "") + "label-noise transition matrix")
    return save_figure(fig, path)
