"""PNG plots of a run record (:class:`slem.train.record.RunRecord`): learned weight against
loss per class group, weights of truly clean against truly noisy samples, learning curves,
the learned learning rate and the meta-training curve. Every function takes plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slem.methodology.inputs import WEIGHT_INPUTS
from slem.report.few_shot_plots import adaptation_curves, validation_curve
from slem.report.figure import (  # first: it selects the Agg backend
    integer_ticks,
    legend,
    legend_below,
    line,
    new_figure,
    save_figure,
)
from slem.report.hypergradient_plots import hyperparameter_trajectories
from slem.report.loss_plots import adjuster_curves, head_labels, transition_heatmaps
from slem.report.nas_plots import operation_weights, pareto_front, search_progress
from slem.report.regression_plots import learned_loss, predicted_vs_true

if TYPE_CHECKING:
    from slem.train.record import RunRecord

__all__ = ["save_figure", "write_run_plots"]

#: what the validation labels are (``RunRecord.info["val_labels"]``), as series labels say it
VAL_LABELS = {
    "noisy": "noisy labels",
    "as_given": "labels as given, may be noisy",
    "clean": "clean labels",
}


def write_run_plots(record: RunRecord, run_dir: Path) -> list[Path]:
    """Every plot ``record`` has the data for, as PNGs in ``run_dir/plots/`` (created);
    returns the files written.

    ``learning_curves.png`` (a per-epoch history), ``meta_training.png`` (``meta_loss``),
    ``learned_loss.png`` and ``predicted_vs_true.png`` (regression), ``adjuster_vs_margin.png``,
    ``transition.png``, ``lr_schedule.png`` (``lr_trace``), ``hyperparameters.png``
    (``hyper_lr``: method hypergradient), ``weight_vs_loss.png`` and
    ``weight_histograms.png`` (``train_weights``), ``meta_validation.png`` (``val_metric``)
    and ``adaptation.png`` (``sinusoid_*``: few-shot runs), ``operation_weights.png``
    (``mixing_weights``: DARTS), ``search.png`` and ``pareto_front.png`` (``objective_values``:
    black-box architecture search). The CLI writes them into every run
    directory; from Python: ``slem.report.write_run_plots(record, run_dir)`` with the record
    :func:`slem.train.train_run` returns.
    """
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    a, info = record.arrays, record.info
    title = run_title(record.summary, info)
    paths = []
    if "meta_loss" in a:
        paths.append(
            meta_training_curve(
                a["meta_loss"],
                out / "meta_training.png",
                str(info.get("meta_loss_label", "meta loss")),
                str(info.get("meta_title", "meta-training")),
            )
        )
    if len(a.get("val_iteration", ())) > 0:
        paths.append(
            validation_curve(
                a["val_iteration"],
                a["val_metric"],
                str(info.get("val_label", "meta-validation score")),
                out / "meta_validation.png",
                str(info.get("val_title", "meta-validation")),
            )
        )
    if "sinusoid_x" in a:
        paths.append(
            adaptation_curves(
                a["sinusoid_x"],
                a["sinusoid_truth"],
                a["sinusoid_support_x"],
                a["sinusoid_support_y"],
                a["sinusoid_prediction"],
                a["sinusoid_steps"],
                out / "adaptation.png",
                "adapting to new sinusoids from the meta-learned start",
            )
        )
    if record.history and all("epoch" in row for row in record.history):  # not meta-training
        paths.append(
            learning_curves(
                record.history,
                out / "learning_curves.png",
                title,
                info.get("val_labels"),
                str(record.summary.get("method") or ""),
                record.summary.get("selected_on"),
            )
        )
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
                title,
            )
        )
    if "test_prediction" in a:
        paths.append(
            predicted_vs_true(
                a["test_prediction"],
                a["test_target"],
                out / "predicted_vs_true.png",
                info.get("title", title),
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
                info,
                title,
            )
        )
    if "transition_estimated" in a:
        paths.append(
            transition_heatmaps(
                {info.get("transition_label", "estimated"): a["transition_estimated"]},
                a["transition_true"],
                out / "transition.png",
                title,
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
                title,
                int(info.get("steps_per_epoch", 0)),
                int(info.get("lr_warmup_steps", 0)),
            )
        )
    if "hyper_lr" in a:
        epoch = a["hyper_step"] / max(int(info.get("steps_per_epoch", 1)), 1)
        hyper_labels = {"lr": "base learning rate", "weight_decay": "weight decay"}
        tuned = [k for k in hyper_labels if k in info.get("hyper_tuned", hyper_labels)]
        paths.append(
            hyperparameter_trajectories(
                [(hyper_labels[k], {hyper_labels[k]: (epoch, a[f"hyper_{k}"])}) for k in tuned],
                {"outer loss": (epoch, a["hyper_outer_loss"])},
                out / "hyperparameters.png",
                f"tuned online by hypergradients: {title}",
                "epoch",
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
                    info,
                    title,
                )
            )
        paths.append(
            weight_histograms(
                a["train_weights"], a.get("noisy_mask"), out / "weight_histograms.png", title
            )
        )
    if "mixing_weights" in a and len(a["mixing_weights"]):
        paths.append(
            operation_weights(
                a["mixing_weights"],
                a["mixing_epochs"],
                info["edges"],
                info["operations"],
                out / "operation_weights.png",
                str(info.get("title", "DARTS")),
            )
        )
    if "objective_values" in a and len(a["objective_values"]):
        names = list(info["objectives"])
        values = a["objective_values"]
        paths.append(
            search_progress(
                values[:, 0], f"{names[0]} (%)", out / "search.png", str(info.get("title"))
            )
        )
        if "pareto_mask" in a:
            paths.append(
                pareto_front(
                    values, a["pareto_mask"], names, out / "pareto_front.png", str(info["title"])
                )
            )
    return paths


def run_title(summary: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """``mwnet on mnist1d`` (the record's ``title``, else from its summary), or ``run``."""
    if info.get("title"):
        return str(info["title"])
    method, dataset = summary.get("method"), summary.get("dataset")
    if method and dataset:
        return f"{method} on {dataset}"
    return str(method or dataset or "run")


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[float] | None:
    values = [r.get(key) for r in history]
    if not any(isinstance(v, int | float) for v in values):
        return None
    return [float(v) if isinstance(v, int | float) else np.nan for v in values]


def learning_curves(
    history: list[dict[str, Any]],
    path: Path,
    title: str = "run",
    val_labels: str | None = None,
    method: str = "",
    selected_on: str | None = None,
) -> Path:
    """Per epoch: the losses (left) and the validation metric with the learned weights' AUC
    (right). Classification: training, validation (cross-entropy) and meta loss, validation
    accuracy on the validation split's labels (``val_labels``: ``noisy``, ``as_given`` or
    ``clean``, said in the labels). Regression: the training and meta loss in robust target
    units (left), the validation MAE in target units (right); the validation r²/2 (robust
    units) is left out, a third kind of loss."""
    epochs = [int(r["epoch"]) for r in history]
    regression = _series(history, "val_mae") is not None
    said = VAL_LABELS.get(str(val_labels), "")
    if regression:
        said = said.replace("labels", "targets")
    qualifier = f" ({said})" if said else ""
    fig, (ax_loss, ax_val) = new_figure(1, 2, figsize=(11, 4.2))
    fig.suptitle(f"{title}: learning curves")
    trained_with = f" ({method})" if method else ""
    keys: list[tuple[str, str]] = [("train_loss", f"train loss{trained_with}")]
    if not regression:
        keys.append(("val_loss", f"val loss (cross-entropy{', ' + said if said else ''})"))
    keys.append(("train_meta_loss", "meta loss (outer objective)"))
    for key, label in keys:
        values = _series(history, key)
        if values is not None:
            line(ax_loss, epochs, values, label=label)
    ax_loss.set_title("training")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel(
        "mean loss per sample (robust target units)"
        if regression
        else "mean loss per sample (cross-entropy: nats)"
    )
    integer_ticks(ax_loss)
    legend(ax_loss)

    accuracy, balanced = _series(history, "val_accuracy"), _series(history, "val_balanced_accuracy")
    mae, aucs = _series(history, "val_mae"), _series(history, "weight_auc")
    ax_auc = ax_val
    if regression and mae is not None:  # the MAE in target units, the AUC on its own axis
        line(ax_val, epochs, mae, label=f"val MAE{qualifier}")
        ax_val.set_ylabel("mean absolute error (target units)")
        if aucs is not None:
            ax_auc = ax_val.twinx()
            ax_auc.set_ylabel("AUC (0 to 1)")
    elif accuracy is not None:
        line(ax_val, epochs, accuracy, label=f"val accuracy{qualifier}")
        if balanced is not None and selected_on == "val_balanced_accuracy":
            line(ax_val, epochs, balanced, "--", label=f"val balanced accuracy{qualifier}")
        ax_val.set_ylim(-0.02, 1.02)
        ax_val.set_ylabel("accuracy (0 to 1)" if aucs is None else "accuracy / AUC (0 to 1)")
    else:
        ax_val.set_ylabel("AUC (0 to 1)")
    if aucs is not None:
        line(ax_auc, epochs, aucs, color="C2", label="weight AUC (truly clean vs truly noisy)")
        ax_auc.set_ylim(-0.02, 1.02)
    ax_val.set_title("validation" if aucs is None else "validation and learned weights")
    ax_val.set_xlabel("epoch")
    integer_ticks(ax_val)
    handles = [h for ax in {ax_val, ax_auc} for h in ax.get_legend_handles_labels()[0]]
    handles.sort(key=lambda h: 0 if h.axes is ax_val else 1)
    if handles:
        ax_val.legend(handles=handles, labels=[h.get_label() for h in handles])
    return save_figure(fig, path)


def meta_training_curve(
    meta_loss: np.ndarray, path: Path, label: str = "meta loss", title: str = "meta-training"
) -> Path:
    """The meta loss per meta-iteration (and its running mean) while meta-training; ``label``
    says what the meta loss is."""
    values = np.asarray(meta_loss, dtype=np.float64)
    fig, ax = new_figure(figsize=(7, 4))
    line(ax, np.arange(1, len(values) + 1), values, alpha=0.5, lw=0.8, label="meta loss")
    if len(values) >= 10:
        k = max(len(values) // 20, 5)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(k, len(values) + 1), smooth, color="C1", label=f"running mean of {k}")
    ax.set_title(title)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(label)
    integer_ticks(ax)
    legend(ax)
    return save_figure(fig, path)


def lr_schedule(
    trace: np.ndarray,
    reference: np.ndarray,
    lr0: float,
    stages: np.ndarray,
    path: Path,
    title: str = "run",
    steps_per_epoch: int = 0,
    warmup_steps: int = 0,
) -> Path:
    """The learning rate the optimizer took at every step (``trace``: the learned schedule's,
    as it set it), against the hand-designed cosine schedule ``reference`` from ``lr0`` (not
    used; for comparison), with the steps where a new schedule snapshot took over (``stages``:
    rows of (step, stage)) and the warm-up steps before the first meta step (the learned rate
    sets them too). With ``steps_per_epoch`` a top axis counts epochs."""
    trace = np.asarray(trace, dtype=np.float64)
    steps = np.arange(1, len(trace) + 1)
    fig, ax = new_figure(figsize=(8, 4.4))
    if warmup_steps > 0:
        ax.axvspan(
            0.5,
            min(warmup_steps, len(trace)) + 0.5,
            color="0.9",
            label="warm-up: no meta steps yet (the learned rate is used)",
        )
    line(ax, steps, trace, lw=1.2, label="rate used at each step (learned, MLR-SNet)")
    line(
        ax,
        np.arange(1, len(reference) + 1),
        reference,
        "--",
        lw=1,
        color="C1",
        label=f"hand-designed cosine from optim.lr = {lr0:g} (reference, not used)",
    )
    top = float(np.nanmax(trace)) if len(trace) else lr0
    for step, stage in np.asarray(stages).reshape(-1, 2)[1:].tolist():
        ax.axvline(step, color="grey", lw=0.8, ls=":")
        ax.text(step, top, f" stage {stage}", fontsize=8, va="top")
    ax.set_title(f"{title}: learning rate per step")
    ax.set_xlabel("training step")
    ax.set_ylabel("learning rate")
    ax.set_ylim(bottom=0)
    integer_ticks(ax)
    if steps_per_epoch > 0:
        epochs = ax.secondary_xaxis(
            "top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch)
        )
        epochs.set_xlabel("epochs completed")
        integer_ticks(epochs)
    legend(ax, fontsize=8)
    return save_figure(fig, path)


def weight_vs_loss(
    loss: np.ndarray,
    weights: np.ndarray,
    kind: str,
    path: Path,
    along: str = "loss",
    info: Mapping[str, Any] | None = None,
    title: str = "",
) -> Path:
    """The learned weighting function: ``weights`` (n_groups, n) against its input ``along``
    (``loss``, shape (n,); a rule with several inputs: its first one, the others at their
    medians), row g for the classes of size group g. One curve per head of the net the task's
    classes use (``info``: a record's, with ``weight_heads`` and the task's class groups;
    :func:`~slem.report.loss_plots.head_labels`); the legend's title names the heads no class
    uses."""
    info = info or {}
    heads = int(info.get("weight_heads", len(weights)))
    used, empty = head_labels(info, heads)
    fig, ax = new_figure(figsize=(7.5, 5.4))
    for head, label in used:
        line(ax, loss, weights[min(head, len(weights) - 1)], label=label)
    described = WEIGHT_INPUTS.get(along)
    ax.set_xlabel(
        "per-sample training loss (cross-entropy, nats)"
        if along == "loss"
        else f"{along}: {described.why}"
        if described is not None
        else f"{along} of a sample"
    )
    ax.set_ylabel("sample weight (before normalization)")
    ax.set_ylim(0, 1)
    legend_below(fig, ax, empty)
    net = "" if kind in title.split() else f"{kind} "
    ax.set_title(
        (f"{title}: " if title else "")
        + f"learned {net}weight as a function of {along}"
        + ("" if along == "loss" else "\n(its other inputs at their medians)")
    )
    return save_figure(fig, path)


def weight_histograms(
    weights: np.ndarray, noisy: np.ndarray | None, path: Path, title: str = ""
) -> Path:
    """Histograms of the learned weights of the truly clean and the truly noisy samples
    (``noisy`` ``(n,)`` bool); of all training samples when which labels are wrong is not
    known (``noisy`` None: a user's own labels)."""
    fig, ax = new_figure(figsize=(7, 4.4))
    bins = np.linspace(float(weights.min()), float(weights.max()) + 1e-9, 40).tolist()
    if noisy is None:
        ax.hist(weights, bins=bins, alpha=0.6, label=f"all training samples ({len(weights)})")
        noisy = np.zeros(len(weights), dtype=bool)
    else:
        ax.hist(weights[~noisy], bins=bins, alpha=0.6, label=f"truly clean ({(~noisy).sum()})")
    if noisy.any():
        ax.hist(weights[noisy], bins=bins, alpha=0.6, label=f"truly noisy ({noisy.sum()})")
    ax.set_title((f"{title}: " if title else "") + "learned weights of the training samples")
    ax.set_xlabel("sample weight (before normalization)")
    ax.set_ylabel("training samples")
    legend(ax)
    return save_figure(fig, path)
