"""PNG plots of a run: learned weight against loss per class group, weights of truly clean
against truly noisy samples, and learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

if TYPE_CHECKING:
    from slem.train.trainer import Trainer, TrainResult


def write_run_plots(run_dir: Path, trainer: Trainer, result: TrainResult) -> list[Path]:
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = [learning_curves(result.history, out / "learning_curves.png")]
    if trainer.methodology is not None and result.train_weights is not None:
        paths.append(weight_vs_loss(trainer, out / "weight_vs_loss.png"))
        paths.append(
            weight_histograms(
                result.train_weights, trainer.task.train.noisy_mask, out / "weight_histograms.png"
            )
        )
    return paths


def learning_curves(history: list[dict[str, object]], path: Path) -> Path:
    epochs = [int(r["epoch"]) for r in history]  # type: ignore[call-overload]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (
        ("train_loss", "train loss"),
        ("val_loss", "val loss (noisy labels)"),
        ("train_meta_loss", "meta loss"),
    ):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, [np.nan if v is None else v for v in values], label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [r.get("val_accuracy") for r in history], label="val accuracy")
    aucs = [r.get("weight_auc") for r in history]
    if any(a is not None for a in aucs):
        ax_acc.plot(
            epochs, [np.nan if a is None else a for a in aucs], label="weight AUC (clean vs noisy)"
        )
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weight_vs_loss(trainer: Trainer, path: Path) -> Path:
    """The learned weighting function: weight against loss, one curve per class group."""
    assert trainer.methodology is not None
    observed = trainer.per_sample_eval_losses(trainer.train_x, trainer.train_y)
    top = float(torch.quantile(observed, 0.99)) if len(observed) else 5.0
    grid = torch.linspace(0, max(top, 1.0), 200, device=trainer.device)
    n_groups = max(trainer.task.features.n_groups, 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    with torch.no_grad():
        for g in range(n_groups):
            groups = torch.full((len(grid),), g, dtype=torch.long, device=trainer.device)
            w = trainer.methodology(grid, groups).cpu().numpy()
            ax.plot(grid.cpu().numpy(), w, label=f"class group {g}" if n_groups > 1 else "all")
    ax.set_xlabel("training loss of a sample")
    ax.set_ylabel("learned weight")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"{trainer.methodology.kind}: weight as a function of loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weight_histograms(weights: np.ndarray, noisy: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(float(weights.min()), float(weights.max()) + 1e-9, 40).tolist()
    ax.hist(weights[~noisy], bins=bins, alpha=0.6, label=f"truly clean ({(~noisy).sum()})")
    if noisy.any():
        ax.hist(weights[noisy], bins=bins, alpha=0.6, label=f"truly noisy ({noisy.sum()})")
    ax.set_xlabel("learned weight")
    ax.set_ylabel("training samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
