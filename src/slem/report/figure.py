"""Writing matplotlib figures: the Agg backend (no display needed), :func:`new_figure` (a
figure laid out by matplotlib's constrained layout, so no label is clipped), :func:`save_figure`
(an atomic PNG write) and the drawing rules every plot of slem follows: a title, labelled axes
with units, a legend that lists exactly the labelled series, integer epoch ticks
(:func:`integer_ticks`) and no invisible series (:func:`line`: a series with isolated points is
drawn with markers)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from slem.rundir import atomic_write_bytes

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

#: called with every figure (and its path) just before :func:`save_figure` writes and closes
#: it: tests use it to inspect what is drawn (titles, labels, legends)
INSPECT: list[Callable[[Any, Path], None]] = []


def new_figure(
    nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.2), **kwargs: Any
) -> tuple[Any, Any]:
    """``plt.subplots`` with constrained layout (axes labels, titles and legends fit)."""
    return plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", **kwargs)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out (figures without a layout engine: ``tight_layout``), write as PNG through a
    temporary file (:func:`slem.rundir.atomic_write_bytes`) and close ``fig``."""
    path = Path(path)
    for inspect in INSPECT:
        inspect(fig, path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def integer_ticks(ax: Any, axis: str = "x") -> None:
    """Ticks at whole numbers only (epochs, trials, queries); a range shorter than 2 (one
    epoch) is widened to 2 around its middle, so it holds whole numbers to tick."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(integer=True))
    get, set_ = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
    lo, hi = get()
    if abs(hi - lo) < 2:
        middle, sign = (lo + hi) / 2, 1 if hi >= lo else -1
        set_(middle - sign, middle + sign)


def line(
    ax: Any,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``ax.plot`` that never draws an invisible series: with a point that has no finite
    neighbour (one epoch, or a value between gaps) or with few points, every point gets a
    marker."""
    values = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(values)
    left = np.concatenate([[False], finite[:-1]])
    right = np.concatenate([finite[1:], [False]])
    isolated = bool((finite & ~left & ~right).any())
    if (isolated or finite.sum() <= 12) and "marker" not in kwargs:
        kwargs["marker"] = "o"
        kwargs.setdefault("markersize", 4)
    return ax.plot(x, values, *args, **kwargs)[0]


def legend(ax: Any, **kwargs: Any) -> Any:
    """The legend of ``ax``'s labelled series (none when it has none)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return ax.legend(handles, labels, **kwargs)


def legend_below(fig: Any, ax: Any, title: str | None = None) -> Any:
    """One legend of ``ax``'s labelled series under the axes of ``fig`` (constrained layout
    makes room for it), where it covers no curve; ``title`` is a note above its entries."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    return fig.legend(
        handles, labels, loc="outside lower center", fontsize=8, title=title, title_fontsize=8
    )
