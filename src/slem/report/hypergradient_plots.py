"""Trajectories of hyperparameters tuned by hypergradients: the learning rate and weight decay
of ``method: hypergradient`` runs over their epochs, and the penalties of an offline
(implicit-differentiation) search over its outer steps, each with the outer (validation) loss
it descends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from slem.report.figure import legend, line, new_figure, save_figure

#: at most this many individual curves in one panel (more: median and 10-90% band)
MAX_CURVES = 12

Series = tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]
Panel = tuple[str, Mapping[str, Series]]


def hyperparameter_trajectories(
    panels: Sequence[Panel],
    loss: Mapping[str, Series],
    out: Path,
    title: str,
    xlabel: str,
    loss_label: str = "validation loss (cross-entropy, nats)",
) -> Path:
    """One panel per ``(y label, {series label: (x, y)})`` on a log scale (hyperparameters are
    positive and tuned in log space), and a last panel of the outer loss ``{label: (x, y)}``.
    A panel of more than :data:`MAX_CURVES` series sharing one ``x`` (one penalty per
    feature) shows their median and 10-90% band instead of each line."""
    fig, grid = new_figure(len(panels) + 1, 1, figsize=(6.4, 2.3 * (len(panels) + 1)), sharex=True)
    axes = np.atleast_1d(grid)
    for ax, (ylabel, series) in zip(axes, panels, strict=False):
        if len(series) > MAX_CURVES:
            xs = np.asarray(next(iter(series.values()))[0], dtype=np.float64)
            values = np.asarray([np.asarray(y, dtype=np.float64) for _, y in series.values()])
            low, mid, high = np.quantile(values, [0.1, 0.5, 0.9], axis=0)
            ax.fill_between(xs, low, high, alpha=0.3, label=f"10-90% of {len(series)}")
            line(ax, xs, mid, label="median")
        else:
            for label, (x, y) in series.items():
                line(ax, x, y, label=label)
        drawn = [np.asarray(y, dtype=np.float64) for _, y in series.values()]
        if all((v[np.isfinite(v)] > 0).all() for v in drawn):
            ax.set_yscale("log")  # a value held at 0 (not tuned) stays on a linear axis
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            legend(ax, fontsize=8)
    loss_ax = axes[-1]
    for label, (x, y) in loss.items():
        line(loss_ax, x, y, label=label)
    if len(loss) > 1:
        legend(loss_ax, fontsize=8)
    loss_ax.set_ylabel(loss_label)
    loss_ax.set_xlabel(xlabel)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def start_trajectories(run_dir: Path) -> Path | None:
    """``run_dir/plots/hyperparameters.png``: the learning rate, weight decay and outer loss
    of every start of a hypergradient study (its ``trajectories.csv``) over the epochs."""
    import csv

    path = Path(run_dir) / "trajectories.csv"
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.read_text().splitlines()))
    if not rows:
        return None
    starts: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        starts.setdefault(f"start lr {float(r['start_lr']):g}", []).append(r)

    def series(key: str) -> dict[str, Series]:
        return {
            label: ([float(r["epoch"]) for r in rs], [float(r[key]) for r in rs])
            for label, rs in starts.items()
        }

    (Path(run_dir) / "plots").mkdir(parents=True, exist_ok=True)
    panels = [
        (label, series(key))
        for key, label in (("lr", "base learning rate"), ("weight_decay", "weight decay"))
        if len({r[key] for r in rows}) > 1  # a hyperparameter that was not tuned: no panel
    ]
    return hyperparameter_trajectories(
        panels,
        series("outer_loss"),
        Path(run_dir) / "plots" / "hyperparameters.png",
        "hyperparameters tuned online by hypergradients, one run per start",
        "epoch",
    )


def penalty_trajectory(run_dir: Path) -> Path | None:
    """``run_dir/plots/penalties.png``: the L2 penalties of a penalty search (its
    ``trajectory.csv``) and its validation loss over the outer steps."""
    import csv

    path = Path(run_dir) / "trajectory.csv"
    if not path.is_file():
        return None
    rows = list(csv.DictReader(path.read_text().splitlines()))
    if not rows:
        return None
    steps = [float(r["step"]) for r in rows]
    columns = [c for c in rows[0] if c.startswith("penalty_")]
    penalties = {
        f"group {c.removeprefix('penalty_')}": (steps, [float(r[c]) for r in rows]) for c in columns
    }
    (Path(run_dir) / "plots").mkdir(parents=True, exist_ok=True)
    return hyperparameter_trajectories(
        [("L2 penalty", penalties)],
        {"validation loss": (steps, [float(r["val_loss"]) for r in rows])},
        Path(run_dir) / "plots" / "penalties.png",
        f"{len(columns)} L2 {'penalty' if len(columns) == 1 else 'penalties'} by implicit "
        "hypergradients",
        "outer step",
        "validation loss (log-loss, nats, or MSE)",
    )
