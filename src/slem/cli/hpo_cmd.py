"""``slem hpo CONFIG.yaml``: a black-box HPO / CASH study with a live best-so-far table.

With ``--storage postgresql://...`` and ``--workers N`` it starts N worker processes on one
study; the same command on other machines adds workers to it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from rich.live import Live
from rich.table import Table

from slem.automl.config import HPOConfig, parse_hpo_config
from slem.automl.run import (
    CONFIG_FILE,
    load_study,
    prepare,
    prepare_shared,
    read_hpo_config,
    run_worker,
    spawn_workers,
    wait_for_study,
    write_results,
)
from slem.automl.study import best_rows
from slem.cli.console import console, user_errors
from slem.cli.train_cmd import OutOption, QuietOption, SetOption
from slem.errors import SlemError
from slem.train.config import apply_overrides, load_yaml


def progress_table(study: optuna.Study, total: int) -> Table:
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    table = Table(
        title=f"study {study.study_name}: {len(trials)}/{total} trials "
        f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
        f"{states.count('FAIL')} failed, {states.count('RUNNING')} running)"
    )
    for col in ("rank", "trial", "value", "params"):
        table.add_column(col)
    for rank, t in enumerate(best_rows(study, 5), 1):
        params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        table.add_row(str(rank), str(t.number), f"{t.value:.4f}", params)
    return table


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def load_config(path: Path, overrides: list[str]) -> HPOConfig:
    values = load_yaml(path)
    values.pop("provenance", None)  # a run's own hpo.yaml works as a config too
    cfg = parse_hpo_config(apply_overrides(values, overrides))
    base = getattr(cfg.objective, "base", None)
    if isinstance(base, str) and not Path(base).is_absolute():
        # relative to the working directory, else to the config's own directory
        found = next((p for p in (Path(base), path.parent / base) if p.is_file()), Path(base))
        cfg.objective.base = str(found.resolve())  # type: ignore[union-attr]
    return cfg


def hpo(
    config: Annotated[
        Path | None, typer.Argument(help="YAML study config (see examples/).")
    ] = None,
    out: OutOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the study in --out (or its default dir).")
    ] = False,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Study storage URL (default: SQLite in the run directory), e.g. "
            "postgresql://user:pw@host/db; workers on other machines join with it."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 1,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Total trials of the study (default: config).")
    ] = None,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Search hyperparameters (or model family + hyperparameters) as CONFIG says."""
    if config is None:
        if not (resume and out is not None):
            raise SlemError("give a CONFIG.yaml (see examples/), or --resume --out RUN_DIR")
        cfg = read_hpo_config(out)
        config = out / CONFIG_FILE
    else:
        cfg = load_config(config, set_ or [])
    run_dir = out or Path("runs") / f"hpo-{cfg.study.name}"
    url = prepare(cfg, run_dir, storage, resume or worker)
    total = trials or cfg.study.trials
    if worker:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        run_worker(cfg, url, trials=total)
        return
    if workers > 1:
        prepare_shared(cfg, url)
        spawn_with_progress(run_dir / CONFIG_FILE, run_dir, url, workers, total, cfg, quiet)
        study = load_study(cfg, url)
    else:
        study = run_with_progress(cfg, url, total, quiet)
    summary = write_results(study, run_dir)
    if "best_value" in summary:
        console.print(
            f"best trial {summary['best_trial']}: value {summary['best_value']:.4f} "
            f"(validation); test {summary['best_test'] or 'n/a'}; params {summary['best_params']}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print("no trial completed; see trials.csv for the errors", highlight=False)
    console.print(f"run directory: {run_dir}", highlight=False)


def run_with_progress(cfg: HPOConfig, url: str, total: int, quiet: bool) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if quiet:
        return run_worker(cfg, url, trials=total)
    with Live(console=console, refresh_per_second=2) as live:

        def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            live.update(progress_table(study, total))

        return run_worker(cfg, url, callbacks=[show], trials=total)


def spawn_with_progress(
    config_path: Path, run_dir: Path, url: str, n: int, total: int, cfg: HPOConfig, quiet: bool
) -> None:
    import threading

    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.extend(spawn_workers(config_path, run_dir, url, n, total))
    )
    thread.start()
    if not quiet:
        study = wait_for_study(cfg, url)
        with Live(console=console, refresh_per_second=1) as live:
            while thread.is_alive():
                live.update(progress_table(study, total))
                time.sleep(1.0)
            live.update(progress_table(study, total))
    thread.join()
    if any(codes):
        console.print(f"worker exit codes: {codes}", highlight=False)


def meta_dataset(
    out: Annotated[
        Path | None, typer.Option(help="Where to write it (default: the shipped file).")
    ] = None,
    trials: Annotated[int, typer.Option(min=1, help="CASH trials per table.")] = 30,
    per_task: Annotated[int, typer.Option(min=1, help="Candidates kept per table.")] = 2,
    tables: Annotated[
        int | None, typer.Option(min=1, help="Only the first N meta-training tables.")
    ] = None,
    seed: int = 0,
) -> None:
    """Build the meta-dataset for warm start, zero-shot and portfolios: a CASH study on every
    meta-training table (slem.automl.tables), then every task's best configurations scored
    on every other task."""
    from slem.automl.build import SHIPPED, build_meta_dataset
    from slem.automl.tables import META_TRAIN_TABLES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    specs = META_TRAIN_TABLES[:tables] if tables else META_TRAIN_TABLES
    store = build_meta_dataset(
        specs, trials, per_task, seed, log=lambda m: console.print(m, highlight=False)
    )
    path = store.save(out or SHIPPED)
    console.print(
        f"meta-dataset: {len(store.tasks)} tasks, {len(store.candidates)} candidates -> {path}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("hpo")(user_errors(hpo))
    app.command("meta-dataset")(user_errors(meta_dataset))
