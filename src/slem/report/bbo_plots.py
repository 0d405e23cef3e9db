"""The regret curve of a learned black-box optimizer against random search (``slem bbo run
--out``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from slem.report.figure import integer_ticks, legend, line, new_figure, save_figure


def regret_curve(curves: Mapping[str, np.ndarray], path: Path, title: str) -> Path:
    """Simple regret (best value so far minus the function's minimum) after each query: per
    searcher in ``curves`` (name to an array (queries, searches)), the mean over the searches
    with a band from the 25th to the 75th percentile; log scale when every mean is positive."""
    fig, ax = new_figure(figsize=(7, 4.4))
    means = []
    for i, (name, regret) in enumerate(curves.items()):
        r = np.asarray(regret, dtype=np.float64).reshape(len(regret), -1)
        queries = np.arange(1, len(r) + 1)
        mean = r.mean(1)
        means.append(mean)
        line(ax, queries, mean, color=f"C{i}", label=f"{name}: mean of {r.shape[1]} searches")
        if r.shape[1] > 1:
            lo, hi = np.percentile(r, [25, 75], axis=1)
            ax.fill_between(queries, lo, hi, color=f"C{i}", alpha=0.15, lw=0)
    if means and all(bool((m > 0).all()) for m in means):
        ax.set_yscale("log")
    ax.set_title(f"{title}; bands: 25th to 75th percentile", fontsize=10)
    ax.set_xlabel("query (function evaluations so far)")
    ax.set_ylabel("simple regret (best value found - minimum)")
    integer_ticks(ax)
    legend(ax, fontsize=8)
    return save_figure(fig, path)
