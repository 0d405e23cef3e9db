"""Plots of few-shot meta-learning runs: the meta-validation curve, and how a meta-learned
sinusoid regressor adapts to new tasks (Finn et al. 2017, Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slem.report.figure import integer_ticks, legend, line, new_figure, save_figure


def validation_curve(
    iterations: np.ndarray, values: np.ndarray, label: str, path: Path, title: str
) -> Path:
    """The meta-validation score (``label``, e.g. accuracy in %) against the meta step;
    the selected (best) point is marked."""
    fig, ax = new_figure(figsize=(7, 4))
    line(ax, iterations, values, marker="o", label="meta-validation")
    best = int(np.argmax(values) if "accuracy" in label else np.argmin(values))
    ax.scatter(
        [iterations[best]],
        [values[best]],
        s=80,
        facecolors="none",
        edgecolors="C3",
        zorder=3,
        label=f"selected (meta-iteration {int(iterations[best])})",
    )
    ax.set_title(title)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(label)
    integer_ticks(ax)
    legend(ax)
    return save_figure(fig, path)


def adaptation_curves(
    x: np.ndarray,
    truth: np.ndarray,
    support_x: np.ndarray,
    support_y: np.ndarray,
    predictions: np.ndarray,
    steps: np.ndarray,
    path: Path,
    title: str,
) -> Path:
    """One panel per new sinusoid task: the true function, its K support points, and the
    learner's prediction after each number of inner steps in ``steps``.

    Shapes: ``x`` (G,), ``truth`` (T, G), ``support_x``/``support_y`` (T, K),
    ``predictions`` (T, S, G) for ``steps`` (S,)."""
    tasks = truth.shape[0]
    fig, axes = new_figure(ncols=tasks, figsize=(4.2 * tasks, 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    for t, ax in enumerate(axes):
        ax.plot(x, truth[t], color="black", lw=2, label="true function")
        for s, k in enumerate(steps):
            ax.plot(
                x,
                predictions[t, s],
                lw=1.3,
                ls="--" if k == 0 else "-",
                label="meta-learned start"
                if k == 0
                else f"after {int(k)} step" + ("s" if k > 1 else ""),
            )
        ax.scatter(
            support_x[t],
            support_y[t],
            color="C3",
            zorder=3,
            label=f"support ({support_x.shape[1]} points)",
        )
        ax.set_xlabel("x")
        ax.set_title(f"new task {t + 1}")
    axes[0].set_ylabel("y")
    legend(axes[-1], fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)
