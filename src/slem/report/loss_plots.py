"""PNG plots of learned loss settings and model adjustments: the loss adjuster's
hyperparameters against the logit margin, and transition matrices against the true one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from slem.report.figure import save_figure  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # isort: skip


def adjuster_curves(
    margin: np.ndarray, values: np.ndarray, names: Sequence[str], family: str, path: Path
) -> Path:
    """Each of the loss adjuster's hyperparameters against the logit ``margin`` (n,), one
    curve per class group: ``values`` is (n_groups, n, len(names)). The loss fed with a
    margin m is ``softplus(-m)``, the cross-entropy when one rival class holds the rest of the
    probability."""
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for g, group in enumerate(values):
        for j in range(len(names)):
            axes[0, j].plot(margin, group[:, j], label=f"class group {g}")
    for j, name in enumerate(names):
        ax = axes[0, j]
        ax.set_xlabel("logit margin z_y - max other (negative: model disagrees with the label)")
        ax.set_ylabel(f"learned {family.upper()} {name}")
        ax.legend()
    return save_figure(fig, path)


def transition_heatmaps(predicted: Mapping[str, np.ndarray], true: np.ndarray, path: Path) -> Path:
    """The true transition matrix next to each predicted one (rows: clean class, columns:
    observed label), with the mean total-variation error in each title."""
    panels = [("true", true), *predicted.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], panels, strict=True):
        im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        if title != "true":
            err = float(np.abs(matrix - true).sum(1).mean() / 2)
            title = f"{title}\nmean TV error {err:.3f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("observed label")
        ax.set_ylabel("clean class")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
