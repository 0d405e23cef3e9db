"""PNG plots of a run record (:class:`slem.train.record.RunRecord`): learned weight against
loss per class group, weights of truly clean against truly noisy samples, learning curves,
the learned learning rate and the meta-training curve. Every function takes plain data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slem.report.figure import save_figure  # first: it selects the Agg backend
from slem.report.loss_plots import adjuster_curves, transition_heatmaps
from slem.report.regression_plots import learned_loss, predicted_vs_true

import matplotlib.pyplot as plt  # isort: skip

if TYPE_CHECKING:
    from slem.train.record import RunRecord

__all__ = ["save_figure", "write_run_plots"]


def write_run_plots(record: RunRecord, run_dir: Path) -> list[Path]:
    """Every plot ``record`` has the data for, as PNGs in ``run_dir/plots/`` (created);
    returns the files written.

    ``learning_curves.png`` (a per-epoch history), ``meta_training.png`` (``meta_loss``),
    ``learned_loss.png`` and ``predicted_vs_true.png`` (regression), ``adjuster_vs_margin.png``,
    ``transition.png``, ``lr_schedule.png`` (``lr_trace``), ``weight_vs_loss.png`` and
    ``weight_histograms.png`` (``train_weights``). The CLI writes them into every run
    directory; from Python: ``slem.report.write_run_plots(record, run_dir)`` with the record
    :func:`slem.train.train_run` returns.
    """
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    a, info = record.arrays, record.info
    paths = []
    if "meta_loss" in a:
        paths.append(meta_training_curve(a["meta_loss"], out / "meta_training.png"))
    if all("epoch" in row for row in record.history):  # a training run, not meta-training
        paths.append(learning_curves(record.history, out / "learning_curves.png"))
    if "hwnet_curve" in a:
        paths.append(
            learned_loss(
                a["hwnet_residual"],
                a["hwnet_curve"],
                a["hwnet_loss"],
                a["hwnet_l2"],
                info["hwnet_mode"],
                info["hwnet_losses"],
                out / "learned_loss.png",
            )
        )
    if "test_prediction" in a:
        paths.append(
            predicted_vs_true(
                a["test_prediction"],
                a["test_target"],
                out / "predicted_vs_true.png",
                info.get("title", ""),
            )
        )
    if "adjuster_curve" in a:
        paths.append(
            adjuster_curves(
                a["adjuster_margin"],
                a["adjuster_curve"],
                info["adjuster_names"],
                info["adjuster_family"],
                out / "adjuster_vs_margin.png",
            )
        )
    if "transition_estimated" in a:
        paths.append(
            transition_heatmaps(
                {info.get("transition_label", "estimated"): a["transition_estimated"]},
                a["transition_true"],
                out / "transition.png",
            )
        )
    if "lr_trace" in a:
        paths.append(
            lr_schedule(
                a["lr_trace"],
                a["lr_reference"],
                float(info["lr0"]),
                a["lr_stages"],
                out / "lr_schedule.png",
            )
        )
    if "train_weights" in a:
        if "weight_curve" in a:
            paths.append(
                weight_vs_loss(
                    a["weight_curve_loss"],
                    a["weight_curve"],
                    info.get("weighting_kind", "weighting"),
                    out / "weight_vs_loss.png",
                    str(info.get("weight_curve_input", "loss")),
                )
            )
        paths.append(
            weight_histograms(a["train_weights"], a["noisy_mask"], out / "weight_histograms.png")
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


def meta_training_curve(meta_loss: np.ndarray, path: Path) -> Path:
    """Meta loss per meta-iteration (and its running mean) while meta-training."""
    values = np.asarray(meta_loss, dtype=np.float64)
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


def lr_schedule(
    trace: np.ndarray, reference: np.ndarray, lr0: float, stages: np.ndarray, path: Path
) -> Path:
    """The learned learning rate at every step, against the hand-designed cosine schedule
    ``reference`` from ``lr0``, with the steps where a new schedule snapshot took over
    (``stages``: rows of (step, stage))."""
    steps = np.arange(1, len(trace) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, trace, label="learned (MLR-SNet)", lw=1)
    ax.plot(
        np.arange(1, len(reference) + 1),
        reference,
        "--",
        label=f"hand-designed: cosine from {lr0:g}",
    )
    for step, stage in np.asarray(stages).reshape(-1, 2)[1:].tolist():
        ax.axvline(step, color="grey", lw=0.8, ls=":")
        ax.text(step, max(trace), f" stage {stage}", fontsize=8, va="top")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.legend()
    return save_figure(fig, path)


def weight_vs_loss(
    loss: np.ndarray, weights: np.ndarray, kind: str, path: Path, along: str = "loss"
) -> Path:
    """The learned weighting function: ``weights`` (n_groups, n) against its input ``along``
    (``loss``, shape (n,); a rule with several inputs: its first one, the others at their
    medians), one curve per class group."""
    n_groups = len(weights)
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in range(n_groups):
        ax.plot(loss, weights[g], label=f"class group {g}" if n_groups > 1 else "all")
    ax.set_xlabel("training loss of a sample" if along == "loss" else f"{along} of a sample")
    ax.set_ylabel("learned weight")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(
        f"{kind}: weight as a function of {along}"
        + ("" if along == "loss" else "\n(its other inputs at their medians)")
    )
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
