"""Plots of architecture searches: DARTS' operation weights over the search, and a black-box
search's progress and Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slem.report.figure import integer_ticks, legend, legend_below, line, new_figure, save_figure


def operation_weights(
    weights: np.ndarray,
    epochs: np.ndarray,
    edges: Sequence[str],
    operations: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    """One panel per edge: each operation's mixing weight ``softmax(alpha)`` after every epoch
    of the search. Shapes: ``weights`` (T, E, K), ``epochs`` (T,)."""
    n_edges = weights.shape[1]
    fig, axes = new_figure(ncols=n_edges, figsize=(3.8 * n_edges, 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    for e, ax in enumerate(axes):
        for k, op in enumerate(operations):
            line(ax, epochs, weights[:, e, k], marker="o", markersize=3, label=op)
        ax.set_title(edges[e])
        ax.set_xlabel("epoch")
        integer_ticks(ax)
    axes[0].set_ylabel("mixing weight (softmax of alpha)")
    fig.suptitle(title)
    legend_below(fig, axes[0])
    return save_figure(fig, path)


def search_progress(values: np.ndarray, label: str, path: Path, title: str) -> Path:
    """Each trial's value of the first objective (``label``, maximized) and the best so far."""
    fig, ax = new_figure(figsize=(7, 4))
    trials = np.arange(1, len(values) + 1)
    ax.scatter(trials, values, s=12, alpha=0.6, label="trial")
    line(ax, trials, np.maximum.accumulate(values), label="best so far", color="C3")
    ax.set_xlabel("trials evaluated")
    ax.set_ylabel(label)
    ax.set_title(title)
    integer_ticks(ax)
    legend(ax)
    return save_figure(fig, path)


def pareto_front(
    values: np.ndarray, front: np.ndarray, names: Sequence[str], path: Path, title: str
) -> Path:
    """Every trial in the plane of the first two objectives, the Pareto front joined as a
    staircase. ``values`` (n, m), ``front`` (n,) bool."""
    fig, ax = new_figure(figsize=(6.5, 4.5))
    x, y = values[:, 1], values[:, 0]
    ax.scatter(x[~front], y[~front], s=14, alpha=0.5, label="trial")
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="post", color="C3", lw=1.5)
    ax.scatter(x[front], y[front], s=30, color="C3", label="Pareto front", zorder=3)
    ax.set_xlabel(f"{names[1]} (lower is better)")
    ax.set_ylabel(f"{names[0]} (higher is better)")
    ax.set_title(title)
    legend(ax)
    return save_figure(fig, path)
