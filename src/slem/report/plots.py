"""PNG plots of a run: learned weight against loss per class group, weights of truly clean
against truly noisy samples, and learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

if TYPE_CHECKING:
    from slem.train.trainer import Trainer, TrainResult


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out, write as PNG and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_run_plots(run_dir: Path, trainer: Trainer, result: TrainResult) -> list[Path]:
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    paths = [learning_curves(result.history, out / "learning_curves.png")]
    extra = getattr(trainer, "plots", None)  # trainer-specific figures
    if callable(extra):
        paths.extend(extra(out))
    trace = getattr(trainer, "lr_trace", None)
    if trace:
        paths.append(lr_schedule(trainer, trace, out / "lr_schedule.png"))
    if trainer.weighting is not None and result.train_weights is not None:
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

    def series(key: str) -> list[float] | None:
        values = [r.get(key) for r in history]
        if not any(v is not None for v in values):
            return None
        return [np.nan if v is None else float(v) for v in values]  # type: ignore[arg-type]

    accuracy, mae, aucs = series("val_accuracy"), series("val_mae"), series("weight_auc")
    ax_auc = ax_acc
    if accuracy is not None:
        ax_acc.plot(epochs, accuracy, label="val accuracy")
        ax_acc.set_ylim(0, 1)
    elif mae is not None:  # regression: the validation MAE, the weight AUC on its own axis
        ax_acc.plot(epochs, mae, label="val MAE (noisy targets)")
        ax_acc.set_ylabel("MAE")
        if aucs is not None:
            ax_auc = ax_acc.twinx()
            ax_auc.set_ylabel("AUC")
    if aucs is not None:
        ax_auc.plot(epochs, aucs, "C1", label="weight AUC (clean vs noisy)")
        ax_auc.set_ylim(0, 1)
    ax_acc.set_xlabel("epoch")
    axes = [ax_acc] if ax_auc is ax_acc else [ax_acc, ax_auc]
    handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
    if handles:
        ax_acc.legend(handles=handles)
    return save_figure(fig, path)


def meta_training_curve(history: list[dict[str, object]], path: Path) -> Path:
    """Meta loss per meta-iteration (and its running mean) while meta-training."""
    values = np.array([float(r["meta_loss"]) for r in history])  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(values) + 1), values, alpha=0.35, lw=0.8, label="meta loss")
    if len(values) >= 10:
        k = max(len(values) // 20, 5)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(values) + 1), smooth, label=f"running mean ({k})")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("optimizee loss / log C")
    ax.legend()
    return save_figure(fig, path)


def lr_schedule(trainer: Trainer, trace: list[float], path: Path) -> Path:
    """The learned learning rate at every step, against the hand-designed cosine schedule
    from ``optim.lr``, with the steps where a new schedule snapshot took over."""
    steps = np.arange(1, len(trace) + 1)
    total = trainer.config.optim.epochs * trainer.steps_per_epoch
    lr0 = trainer.config.optim.lr
    cosine = lr0 * 0.5 * (1 + np.cos(np.pi * np.minimum(np.arange(total) / max(total, 1), 1.0)))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, trace, label="learned (MLR-SNet)", lw=1)
    ax.plot(np.arange(1, total + 1), cosine, "--", label=f"hand-designed: cosine from {lr0:g}")
    for step, stage in getattr(trainer, "stage_trace", [])[1:]:
        ax.axvline(step, color="grey", lw=0.8, ls=":")
        ax.text(step, max(trace), f" stage {stage}", fontsize=8, va="top")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.legend()
    return save_figure(fig, path)


def weight_vs_loss(trainer: Trainer, path: Path) -> Path:
    """The learned weighting function: weight against loss, one curve per class group."""
    net = trainer.weighting
    assert net is not None
    observed = trainer.per_sample_eval_losses(trainer.train_x, trainer.train_y)
    top = float(torch.quantile(observed, 0.99)) if len(observed) else 5.0
    grid = torch.linspace(0, max(top, 1.0), 200, device=trainer.device)
    n_groups = max(trainer.task.features.n_groups, 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    with torch.no_grad():
        for g in range(n_groups):
            groups = torch.full((len(grid),), g, dtype=torch.long, device=trainer.device)
            w = net(grid, groups).cpu().numpy()
            ax.plot(grid.cpu().numpy(), w, label=f"class group {g}" if n_groups > 1 else "all")
    ax.set_xlabel("training loss of a sample")
    ax.set_ylabel("learned weight")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"{net.kind}: weight as a function of loss")
    return save_figure(fig, path)


def weight_histograms(weights: np.ndarray, noisy: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(float(weights.min()), float(weights.max()) + 1e-9, 40).tolist()
    ax.hist(weights[~noisy], bins=bins, alpha=0.6, label=f"truly clean ({(~noisy).sum()})")
    if noisy.any():
        ax.hist(weights[noisy], bins=bins, alpha=0.6, label=f"truly noisy ({noisy.sum()})")
    ax.set_xlabel("learned weight")
    ax.set_ylabel("training samples")
    ax.legend()
    return save_figure(fig, path)
