"""PNG plots of a regression run: the learned HWnet loss against the residual, and predicted
against clean test targets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slem.report.figure import legend, new_figure, save_figure


def learned_loss(
    residual: np.ndarray,
    curve: np.ndarray,
    loss: np.ndarray,
    l2: np.ndarray,
    mode: str,
    losses: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """An HWnet against the ``residual`` (n,), in robust target units. Mode mix: the mixture
    coefficients ``curve`` (n, K) over the ``losses`` stacked, next to the resulting ``loss``
    (n,); mode weight: the weight ``curve`` (n,), next to ``w(r) ⋅ r²/2``. ``l2 = r²/2`` (n,)
    is drawn for reference."""
    fig, (ax_h, ax_loss) = new_figure(1, 2, figsize=(11, 4.4))
    if mode == "mix":
        ax_h.stackplot(residual, curve.T, labels=list(losses), alpha=0.85)
        ax_h.set_ylabel("mixture coefficient a_k(r) (stacked, sum 1)")
        ax_h.set_title("learned mixture of losses")
        legend(ax_h, loc="lower center", fontsize=8, ncol=len(losses))
    else:
        ax_h.plot(residual, curve, label="learned weight w(r)")
        ax_h.set_ylabel("sample weight (before batch normalization)")
        ax_h.set_title("learned sample weight")
        legend(ax_h, fontsize=8)
    ax_h.set_ylim(0, 1)
    ax_h.set_xlabel("residual r = prediction - target (robust target units)")
    ax_loss.plot(residual, loss, label="learned loss")
    ax_loss.plot(residual, l2, "--", lw=0.8, label="l2 = r²/2 (for reference)")
    ax_loss.set_ylim(0, max(float(np.nanmax(loss)) * 1.1, 1.0))
    ax_loss.set_title("the loss it makes")
    ax_loss.set_xlabel("residual r = prediction - target (robust target units)")
    ax_loss.set_ylabel("per-sample loss (robust target units)")
    legend(ax_loss, fontsize=8)
    fig.suptitle((f"{title}: " if title else "") + "learned regression loss (HWnet)")
    return save_figure(fig, path)


def predicted_vs_true(pred: np.ndarray, true: np.ndarray, path: Path, title: str = "") -> Path:
    """Scatter of predictions against clean targets, with the identity line."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    fig, ax = new_figure(figsize=(5.6, 5.6))
    ax.scatter(true, pred, s=10, alpha=0.6, label=f"test samples ({len(true)})")
    heading = f"{title}: predictions" if title else "predictions"
    if len(true):
        lo = float(min(true.min(), pred.min()))
        hi = float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="prediction = target")
        mse = float(np.mean((pred - true) ** 2))
        heading += f"\ntest MSE {mse:.4g} (clean targets)"
    ax.set_title(heading)
    legend(ax, fontsize=8)
    ax.set_xlabel("clean test target (target units)")
    ax.set_ylabel("prediction (target units)")
    return save_figure(fig, path)
