"""``slem meta-train``: one methodology meta-trained over a family of tasks (SLeM eq. 4/5)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from slem.cli.console import ThreadsOption, console, err_console, set_threads, user_errors
from slem.cli.launch import (
    MaxRestartsOption,
    NprocOption,
    check_launch_options,
    continuing,
    relaunch,
    run_directory,
)
from slem.cli.train_cmd import (
    QuietOption,
    SetOption,
    read_config_values,
    reject_with_resume,
    report_stopped,
    stop_on_signals,
)
from slem.errors import SlemError
from slem.rundir import atomic_write_text
from slem.train import distributed
from slem.train.config import apply_overrides, load_yaml
from slem.train.cross_task import check_family, cross_task_run, parse_cross_task_config
from slem.train.guard import TrainingStopped
from slem.train.run import check_new_run_dir
from slem.train.threads import resolve_device

COMMAND = "slem meta-train"


def meta_train(
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML: tasks (the family), train (each episode's training), steps."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory.")] = None,
    set_: SetOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    nproc: NprocOption = None,
    max_restarts: MaxRestartsOption = 0,
) -> None:
    """Meta-train one methodology over a family of tasks; apply it with 'slem apply'.

    On several ranks (--nproc, or started by torchrun) each rank trains its own episodes and
    the meta-gradients are averaged once per meta step (docs/distributed.md)."""
    check_launch_options(out, resume, nproc, max_restarts)
    if resume is not None:
        reject_with_resume({"CONFIG": config, "--out": out, "--set": set_})
        cfg = parse_cross_task_config(distributed.on_main(lambda: _read_config(resume)))
        run_dir = resume
    else:
        if config is None:
            raise SlemError("give the CONFIG file (tasks, train, steps), or --resume RUN_DIR")
        cfg = parse_cross_task_config(apply_overrides(load_yaml(config), set_ or []))
        if not distributed.restarted():
            check_family(cfg)  # before anything is written
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = out or Path("runs") / f"{stamp}-meta-train-{cfg.train.method}"
    size = nproc if nproc is not None and not distributed.launched() else None
    size = size or int(os.environ.get("WORLD_SIZE", "1") or 1)
    if cfg.tasks_per_step < size:  # before anything is written
        raise SlemError(
            f"tasks_per_step: {cfg.tasks_per_step} episodes cannot be shared by {size} ranks; "
            f"set it to at least {size}"
        )
    if nproc is not None and not distributed.launched():
        resolve_device(cfg.train.device)
        if resume is None:
            check_new_run_dir(run_dir, COMMAND)
        raise typer.Exit(relaunch(nproc, max_restarts, None if resume else run_dir, threads))
    set_threads(threads if threads is not None else cfg.train.threads)
    ranks = distributed.start(resolve_device(cfg.train.device))
    resuming = continuing(run_dir, resume is not None)
    if distributed.restarted() and ranks.main:
        err_console.print(f"torchrun restarted the ranks: {run_dir} resumes from its checkpoint")

    def prepare() -> None:
        if not resuming:
            check_new_run_dir(run_dir, COMMAND)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json")))
            distributed.mark_job(run_dir)

    learners: list[Any] = []
    try:
        with run_directory(run_dir, COMMAND, prepare), stop_on_signals(learners):
            summary = cross_task_run(cfg, run_dir, resuming, not quiet, learners.append)
        distributed.stop(finished=True)
    except TrainingStopped as exc:
        if not ranks.main:
            raise typer.Exit(1) from None
        report_stopped(exc, run_dir, COMMAND)
    finally:
        distributed.stop()
    if not ranks.main:
        return
    mean = summary["episode_test_accuracy_mean"]
    score = f", mean test accuracy of its episodes {mean:.3f}" if mean is not None else ""
    console.print(
        f"{cfg.train.method} meta-trained in {summary['meta_steps']} meta steps on "
        f"{summary['episodes_started']} episodes ({summary['episodes_finished']} finished) "
        f"drawn from a family of {cfg.tasks.n_distinct} tasks"
        f"{score}; apply it with: slem apply {summary['methodology']} --data NAME",
        soft_wrap=True,
    )
    console.print(f"run directory: {run_dir}", soft_wrap=True)


def _read_config(run_dir: Path) -> dict[str, Any]:
    values = read_config_values(run_dir, "meta-train")
    if "method" in values and "tasks" not in values:
        raise SlemError(
            f"'{run_dir}' is a slem train or apply run, not a meta-train run; continue it with: "
            f"slem train --resume {run_dir} (or slem apply --resume {run_dir})"
        )
    return values


def register(app: typer.Typer) -> None:
    app.command("meta-train")(user_errors(meta_train))
