"""Plots of a study, each as a PNG (matplotlib) and an interactive HTML page (plotly): the
optimization history, hyperparameter importances (fANOVA) and parallel coordinates. Every axis
that shows the objective is labelled with the study's metric (``metric``: e.g.
``balanced_accuracy``, said as "validation balanced accuracy")."""

from __future__ import annotations

import itertools
import math
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from slem.report.figure import integer_ticks, legend, legend_below, new_figure, save_figure

#: the metrics of ``slem hpo`` objectives, as axis labels say them
METRIC_LABELS = {
    "accuracy": "validation accuracy",
    "balanced_accuracy": "validation balanced accuracy",
    "val_accuracy": "validation accuracy",
    "val_balanced_accuracy": "validation balanced accuracy",
    "val_loss": "validation loss (cross-entropy, nats)",
    "val_mae": "validation MAE (target units)",
    "val_mse": "validation MSE (squared target units)",
}

#: at most this many parameters get an axis of the parallel-coordinates plot
MAX_PARALLEL_PARAMS = 8


def metric_label(study: optuna.Study, metric: str | None = None) -> str:
    """What the study's objective value is, in words: ``metric`` (or the study's user
    attribute ``metric``) through :data:`METRIC_LABELS`; ``objective value`` when unknown."""
    name = metric or study.user_attrs.get("metric")
    if not name:
        return "objective value"
    return METRIC_LABELS.get(str(name), str(name).replace("_", " "))


def write_study_plots(study: optuna.Study, out_dir: Path, metric: str | None = None) -> list[Path]:
    """Every plot the study has enough trials for; returns the files written. ``metric``
    names the objective (:func:`metric_label`) on the axes and in the pages."""
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    label = metric_label(study, metric)
    fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
    params = parallel_params(complete)
    plots: dict[str, tuple[Callable[..., Path], Callable[..., Any], dict[str, Any]]] = {
        "optimization_history": (
            optimization_history,
            optuna.visualization.plot_optimization_history,
            {},
        ),
        "parallel_coordinates": (
            parallel_coordinates,
            optuna.visualization.plot_parallel_coordinate,
            {"params": params},
        ),
    }
    if len(complete) >= 3:
        plots["param_importances"] = (
            param_importances,
            optuna.visualization.plot_param_importances,
            {"evaluator": fanova},
        )
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks some of its functions experimental
        for name, (png, html, kwargs) in plots.items():
            try:
                paths.append(png(study, out_dir / f"{name}.png", label, **kwargs))
                page = out_dir / f"{name}.html"
                figure = html(study, target_name=label, **kwargs)
                if name == "parallel_coordinates":
                    _name_missing(figure)
                figure.write_html(str(page), include_plotlyjs="directory")
                paths.append(page)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances when no param varies over the complete trials
    return paths


def _better(study: optuna.Study) -> str:
    return "lower" if study.direction == optuna.study.StudyDirection.MINIMIZE else "higher"


def optimization_history(study: optuna.Study, path: Path, label: str) -> Path:
    """Each complete trial's value, each pruned trial's last reported value (at a smaller
    budget) and the best value so far, by trial number."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [
        t for t in trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values
    ]
    fig, ax = new_figure(figsize=(7.5, 4.6))
    x = [t.number for t in complete]
    y = [float(t.value) for t in complete if t.value is not None]
    ax.scatter(x, y, s=22, color="C0", label=f"complete trial ({len(complete)})", zorder=3)
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter(
            [t.number for t in pruned],
            last,
            s=22,
            marker="x",
            color="0.55",
            label=f"pruned trial ({len(pruned)}): its last value, at a smaller budget",
            zorder=2,
        )
    order = np.argsort(x)
    values = np.asarray(y)[order]
    best = (
        np.minimum.accumulate(values)
        if _better(study) == "lower"
        else np.maximum.accumulate(values)
    )
    ax.step(np.asarray(x)[order], best, where="post", color="C3", label="best so far")
    if len(values) == 1:
        ax.plot(np.asarray(x)[order], best, "o", color="C3", markersize=4)
    ax.set_title(f"optimization history of study {study.study_name}")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{label} ({_better(study)} is better)")
    integer_ticks(ax)
    legend(ax, fontsize=8)
    return save_figure(fig, path)


def param_importances(study: optuna.Study, path: Path, label: str, evaluator: Any = None) -> Path:
    """fANOVA importances of the parameters every complete trial has (a conditional
    parameter, set only in some trials, has none)."""
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    if not importances:
        raise ValueError("no parameter to rank")
    names = list(importances)[::-1]
    fig, ax = new_figure(figsize=(7, max(2.8, 1.4 + 0.45 * len(names))))
    ax.barh(names, [importances[n] for n in names], color="C0")
    for i, name in enumerate(names):
        ax.text(importances[name], i, f" {importances[name]:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_title(
        "hyperparameter importance (fANOVA)\nof the parameters every complete trial has",
        fontsize=10,
    )
    ax.set_xlabel(f"share of the variance of the {label}")
    ax.set_ylabel("hyperparameter")
    return save_figure(fig, path)


def parallel_params(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The parameters the parallel-coordinates plot shows: those the most trials set (ties: in
    the order trials first set them), at most :data:`MAX_PARALLEL_PARAMS`."""
    count: dict[str, int] = {}
    for t in trials:
        for name in t.params:
            count[name] = count.get(name, 0) + 1
    first = {name: i for i, name in enumerate(count)}
    return sorted(count, key=lambda n: (-count[n], first[n]))[:MAX_PARALLEL_PARAMS]


def _position(dist: Any, value: Any) -> float:
    """``value`` on an axis from 0 (the low end of the parameter's range) to 1."""
    if isinstance(dist, CategoricalDistribution):
        k = len(dist.choices)
        return dist.choices.index(value) / (k - 1) if k > 1 else 0.5
    lo, hi, v = float(dist.low), float(dist.high), float(value)
    if dist.log:
        lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
    return (v - lo) / (hi - lo) if hi > lo else 0.5


def _ticks(dist: Any) -> list[tuple[float, str]]:
    """The labelled positions of a parameter's axis: every category (shortened), or the ends
    of its range (and the middle of a log range)."""
    if isinstance(dist, CategoricalDistribution):
        return [(_position(dist, c), _short(str(c))) for c in dist.choices]
    assert isinstance(dist, FloatDistribution | IntDistribution)
    lo, hi = float(dist.low), float(dist.high)
    ticks = [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")]
    if dist.log and hi / lo > 100:
        ticks.insert(1, (0.5, f"{math.sqrt(lo * hi):.2g}"))
    return ticks


def _short(text: str, width: int = 12) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def parallel_coordinates(
    study: optuna.Study, path: Path, label: str, params: list[str] | None = None
) -> Path:
    """One line per complete trial through the objective's axis and one axis per parameter
    (``params``, default :func:`parallel_params`), coloured by the objective; a parameter a
    trial does not set (a conditional one) has no point on its axis, and a dotted line goes
    past it.
    The best trial is drawn on top, in red."""
    import matplotlib as mpl

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = params if params is not None else parallel_params(trials)
    n_all = len({p for t in trials for p in t.params})
    dists: dict[str, Any] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            dists.setdefault(name, dist)
    values = np.array([float(t.value) for t in trials if t.value is not None])
    lo, hi = float(values.min()), float(values.max())
    cmap = mpl.colormaps["viridis" if _better(study) == "higher" else "viridis_r"]
    norm = mpl.colors.Normalize(lo, hi if hi > lo else lo + 1e-12)
    best = study.best_trial
    fig, ax = new_figure(figsize=(2.6 + 1.35 * (len(names) + 1), 5.2))
    xs = np.arange(len(names) + 1)
    for t in sorted(trials, key=lambda t: t.number == best.number):
        assert t.value is not None
        ys = [(float(t.value) - lo) / (hi - lo) if hi > lo else 0.5]
        ys += [_position(dists[n], t.params[n]) if n in t.params else np.nan for n in names]
        is_best = t.number == best.number
        color = "red" if is_best else cmap(norm(float(t.value)))
        ax.plot(
            xs,
            ys,
            color=color,
            lw=2.4 if is_best else 1.0,
            alpha=1.0 if is_best else 0.6,
            zorder=3 if is_best else 2,
            label=f"best trial #{t.number}: {float(t.value):.4g}" if is_best else None,
        )
        ax.scatter(xs, ys, s=14 if is_best else 8, color=color, zorder=3 if is_best else 2)
        present = [i for i, y in enumerate(ys) if not np.isnan(y)]
        for i, j in itertools.pairwise(present):
            if j > i + 1:  # past the axes of parameters this trial does not use
                ax.plot(
                    [i, j],
                    [ys[i], ys[j]],
                    ls=":",
                    color=color,
                    lw=1.6 if is_best else 0.8,
                    alpha=0.9 if is_best else 0.45,
                    zorder=3 if is_best else 2,
                )
    for i, name in enumerate(["", *names]):
        ax.axvline(i, color="0.3", lw=0.8, zorder=1)
        if i == 0:  # the objective
            mid = (lo + hi) / 2
            ticks = [(0.0, f"{lo:.4g}"), (0.5, f"{mid:.4g}"), (1.0, f"{hi:.4g}")]
            ticks = ticks if hi > lo else [(0.5, f"{lo:.4g}")]
        else:
            ticks = _ticks(dists[name])
        for y, text in ticks:
            ax.text(
                i + 0.05,
                y,
                text,
                fontsize=7,
                va="center",
                ha="left",
                zorder=4,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
            )
    ax.set_xticks(xs)
    ax.set_xticklabels(
        [textwrap.fill(label, 16), *(n.replace(".", ".\n") for n in names)], fontsize=8
    )
    ax.set_xlim(-0.2, len(names) + 0.8)
    ax.set_ylim(-0.06, 1.06)
    ax.set_yticks([])
    ax.set_xlabel("objective, then hyperparameters (ticks: each axis's range or categories)")
    ax.set_ylabel("position on each axis (low to high)")
    shown = (
        f"; the {len(names)} parameters the most trials set, of {n_all}"
        if len(names) < n_all
        else ""
    )
    ax.set_title(
        f"parallel coordinates of {len(trials)} complete trials of study {study.study_name}\n"
        f"(dotted: past parameters the trial does not use{shown})",
        fontsize=10,
    )
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.85)
    bar.set_label(label)
    legend_below(fig, ax)
    return save_figure(fig, path)


def _name_missing(figure: Any) -> None:
    """Optuna's interactive parallel coordinates put a trial that does not use a parameter on
    a tick named ``None``; name it ``not used``."""
    for note in figure.layout.annotations:
        if note.text == "None":
            note.text = "not used"
    for trace in figure.data:  # a trial's hover text: its (parameter, value) pairs
        pairs = getattr(trace, "customdata", None)
        if pairs is not None and all(len(pair) == 2 for pair in pairs):
            trace.customdata = [
                [name, "not used" if value == "None" else value] for name, value in pairs
            ]
