"""Plots of a study, each as a PNG (matplotlib) and an interactive HTML page (plotly): the
optimization history, hyperparameter importances (fANOVA) and parallel coordinates."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from slem.report.figure import save_figure


def write_study_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Every plot the study has enough trials for; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
    plots: dict[str, tuple[Callable[..., Any], Callable[..., Any], dict[str, Any]]] = {
        "optimization_history": (
            optuna.visualization.matplotlib.plot_optimization_history,
            optuna.visualization.plot_optimization_history,
            {},
        ),
        "parallel_coordinates": (
            optuna.visualization.matplotlib.plot_parallel_coordinate,
            optuna.visualization.plot_parallel_coordinate,
            {},
        ),
    }
    if len(complete) >= 3:
        plots["param_importances"] = (
            optuna.visualization.matplotlib.plot_param_importances,
            optuna.visualization.plot_param_importances,
            {"evaluator": fanova},
        )
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, (png, html, kwargs) in plots.items():
            try:
                ax = png(study, **kwargs)
                paths.append(save_figure(ax.figure, out_dir / f"{name}.png"))
                page = out_dir / f"{name}.html"
                html(study, **kwargs).write_html(str(page), include_plotlyjs="directory")
                paths.append(page)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances when no param varies over the complete trials
    return paths
