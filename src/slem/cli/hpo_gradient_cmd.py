"""``slem hpo`` with ``study.strategy: hypergradient``: no trials; the hyperparameters follow
hypergradients of the validation loss (:mod:`slem.automl.gradient_run`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from slem.automl.config import HPOConfig, PenaltyObjective
from slem.automl.gradient_run import (
    BEST_CONFIG,
    BEST_JSON,
    PENALTIES_FILE,
    penalty_data,
    run_penalty_search,
    run_starts,
    start_configs,
)
from slem.automl.run import check_fresh, check_resume, write_run_file
from slem.cli.console import console
from slem.errors import SlemError
from slem.rundir import lock_run_dir


def refuse_blackbox_options(
    storage: str | None, workers: int, trials: int | None, refit: bool
) -> None:
    """The options of trial-based studies have no meaning here: one line each."""
    given = [
        name
        for name, used in (
            ("--storage", storage is not None),
            ("--workers", workers > 1),
            ("--trials", trials is not None),
            ("--refit", refit),
        )
        if used
    ]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise SlemError(
            f"{', '.join(given)} {verb} to study.strategy blackbox (trials in a study "
            "storage); a hypergradient search runs in this process and its run directory "
            "already holds the trained model"
        )


@contextlib.contextmanager
def study_dir(cfg: HPOConfig, run_dir: Path, resume: bool) -> Iterator[None]:
    """``run_dir`` checked (a new study, or the same one resumed), locked for this process,
    with ``hpo.yaml`` written."""
    if resume:
        check_resume(cfg, run_dir, None)
    else:
        check_fresh(run_dir, None)
    with lock_run_dir(run_dir, "slem hpo"):
        if not resume:
            check_fresh(run_dir, None)  # again, now that no other slem hpo can write here
        write_run_file(cfg, run_dir, None, cfg.study.trials)
        yield


def run_gradient_study(
    cfg: HPOConfig,
    run_dir: Path,
    resume: bool,
    quiet: bool,
) -> dict[str, Any]:
    """Train every start into ``run_dir`` (continuing with ``resume``), write the results
    and the trajectory plot, print the runs and the best one (a penalty objective:
    :func:`run_penalties`)."""
    from slem.cli.train_cmd import run_and_report
    from slem.report.hypergradient_plots import start_trajectories

    if isinstance(cfg.objective, PenaltyObjective):
        return run_penalties(cfg, run_dir, resume)
    from slem.data import build_task
    from slem.train.config import parse_train_config

    configs = start_configs(cfg)  # every config and data problem before any write
    build_task(parse_train_config(configs[0]).data)
    with study_dir(cfg, run_dir, resume):

        def run_one(config: Any, out: Path, resume_run: bool) -> Any:
            return run_and_report(config, out, resume=resume_run, quiet=quiet, command="slem hpo")

        result = run_starts(cfg, run_dir, run_one)
        plot = start_trajectories(run_dir)
    table = Table(title=f"study '{cfg.study.name}': hypergradient runs (one per start)")
    for col in ("start lr", "tuned lr", "tuned wd", "val score", "test (unused)", "run"):
        table.add_column(col)
    for r in result["runs"]:
        table.add_row(
            f"{r['start_lr']:.3g}",
            f"{r['tuned_lr']:.3g}",
            f"{r['tuned_weight_decay']:.3g}",
            f"{r['val_score']:.4f}",
            f"{r['test_accuracy_at_best_val']:.4f}",
            Path(r["run_dir"]).name,
        )
    console.print(table)
    best = result["best"]
    console.print(
        f"best: start {best['start']} (lr {best['start_lr']:g} -> {best['tuned_lr']:.3g}, "
        f"weight decay {best['tuned_weight_decay']:.3g}), validation {best['val_score']:.4f} "
        f"(chose it); test {best['test_accuracy_at_best_val']:.4f}; its model: "
        f"{best['run_dir']}/model.safetensors; trajectories: {plot}; best config: "
        f"{run_dir / BEST_CONFIG} (run it with 'slem train {run_dir / BEST_CONFIG}')",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)
    return result


def run_penalties(cfg: HPOConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """A penalty objective: one search (seconds; ``--resume`` runs it again), its files, the
    trajectory plot and one line of results."""
    from slem.report.hypergradient_plots import penalty_trajectory

    data = penalty_data(cfg)  # every data problem before any write
    with study_dir(cfg, run_dir, resume):
        done = run_dir / BEST_JSON
        if resume and done.is_file():  # a finished search: its results again
            summary = json.loads(done.read_text())
        else:
            summary = run_penalty_search(cfg, run_dir, data)
        plot = penalty_trajectory(run_dir)
    loss = "log-loss" if summary["model"] == "logistic" else "MSE"
    n = summary["n_penalties"]
    test = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("test_"))
    console.print(
        f"{n} L2 {'penalty' if n == 1 else 'penalties'} by implicit hypergradients: "
        f"validation {loss} "
        f"{summary['initial_val_loss']:.4f} -> {summary['val_loss']:.4f} in "
        f"{summary['outer_steps']} steps ({summary['seconds']:.1f} s; stopped: "
        f"{summary['stopped']}); {test} (not used to choose); penalties: "
        f"{run_dir / PENALTIES_FILE}; trajectory: {plot}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)
    return summary
