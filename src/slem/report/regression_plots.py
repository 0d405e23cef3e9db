"""PNG plots of a regression run: the learned HWnet loss against the residual, and predicted
against clean test targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slem.methodology.regression import HyperWeightNet, base_loss
from slem.report.plots import save_figure  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # isort: skip


def learned_loss(net: HyperWeightNet, path: Path, residual_range: float = 6.0) -> Path:
    """Mode mix: the mixture coefficients ``a_k(r)`` stacked, next to the resulting loss;
    mode weight: the weight ``w(r)``, next to ``w(r) ⋅ r²/2``. Residuals in robust target
    units; ``l2 = r²/2`` is drawn for reference."""
    device = next(net.parameters()).device
    grid = torch.linspace(-residual_range, residual_range, 241, device=device)
    out = net.curve(grid).cpu().numpy()
    loss = net.loss_curve(grid).cpu().numpy()
    r = grid.cpu().numpy()
    fig, (ax_h, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    if net.mode == "mix":
        ax_h.stackplot(r, out.T, labels=list(net.losses), alpha=0.85)
        ax_h.set_ylabel("mixture coefficient a_k(r)")
        ax_h.set_title("learned mixture of losses")
        ax_h.legend(loc="upper center", fontsize=8, ncol=len(net.losses))
    else:
        ax_h.plot(r, out, label="w(r)")
        ax_h.set_ylabel("learned weight (before batch normalization)")
        ax_h.set_title("learned sample weight")
    ax_h.set_ylim(0, 1)
    ax_h.set_xlabel("residual r (robust target units)")
    ax_loss.plot(r, loss, label="learned loss")
    ax_loss.plot(r, base_loss("l2", grid).cpu().numpy(), "--", lw=0.8, label="l2 = r²/2")
    ax_loss.set_ylim(0, max(float(np.nanmax(loss)) * 1.1, 1.0))
    ax_loss.set_xlabel("residual r (robust target units)")
    ax_loss.set_ylabel("per-sample loss")
    ax_loss.legend()
    return save_figure(fig, path)


def predicted_vs_true(pred: np.ndarray, true: np.ndarray, path: Path, title: str = "") -> Path:
    """Scatter of predictions against clean targets, with the identity line."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=10, alpha=0.6)
    if len(true):
        lo = float(min(true.min(), pred.min()))
        hi = float(max(true.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="prediction = target")
        mse = float(np.mean((pred - true) ** 2))
        ax.set_title(f"{title}\ntest MSE {mse:.4g}" if title else f"test MSE {mse:.4g}")
        ax.legend()
    ax.set_xlabel("clean test target")
    ax.set_ylabel("prediction")
    return save_figure(fig, path)
