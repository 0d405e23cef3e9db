"""``slem hpo CONFIG.yaml``: a black-box HPO / CASH study with a live best-so-far table.

With ``--storage postgresql://...`` and ``--workers N`` it starts N worker processes on one
study; the same command on other machines adds workers to it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from rich.live import Live
from rich.table import Table

from slem.automl.config import HPOConfig
from slem.automl.load import load_study_config
from slem.automl.objectives import CashTrial, TrainTrial
from slem.automl.outputs import (
    PIPELINE_FILE,
    PIPELINE_INFO,
    REFIT_DIR,
    best_train_config,
    check_refit_dir,
    refit_cash,
)
from slem.automl.run import (
    CONFIG_FILE,
    build_objective,
    check_fresh,
    check_resume,
    check_study_database,
    enqueue_starts,
    joined,
    meta_learned_starts,
    read_hpo_config,
    read_run_file,
    run_worker,
    spawn_workers,
    storage_errors,
    tally_line,
    watch_parent,
    worker_error,
    write_results,
    write_run_file,
)
from slem.automl.study import (
    SOURCE,
    StudyFailed,
    best_rows,
    default_storage,
    open_storage,
    planned,
    tally,
    work,
)
from slem.cli.console import ThreadsOption, console, err_console, set_threads, user_errors
from slem.cli.hpo_gradient_cmd import refuse_blackbox_options, run_gradient_study
from slem.cli.train_cmd import OutOption, QuietOption
from slem.errors import SlemError
from slem.rundir import lock_run_dir


def progress_table(study: optuna.Study, total: int) -> Table:
    """The best-so-far table, titled with the study's tally; ``source`` says where a
    configuration came from (``sampler``, ``zero_shot:...``, ``warm_start:<task>``)."""
    table = Table(title=tally_line(study, total))
    for col in ("rank", "trial", "value", "source", "params"):
        table.add_column(col)
    for rank, t in enumerate(best_rows(study, 5), 1):
        params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        source = str(t.user_attrs.get(SOURCE, ""))
        table.add_row(str(rank), str(t.number), f"{t.value:.4f}", source, params)
    return table


def _score(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def hpo(
    config: Annotated[
        Path | None, typer.Argument(help="YAML study config (see examples/).")
    ] = None,
    out: OutOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the study in --out: trials of workers that died are failed and "
            "replaced, until the study has its total of finished trials.",
        ),
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
        int | None,
        typer.Option(
            min=1, help="Finished trials the study ends with, over all workers (default: config)."
        ),
    ] = None,
    refit: Annotated[
        bool,
        typer.Option(
            "--refit",
            help="After the study, train the best configuration once more into OUT/refit/: "
            "a train objective as a slem train run directory (model.safetensors, ...), a "
            "CASH pipeline fitted on train + validation (pipeline.skops, pipeline.json).",
        ),
    ] = False,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a config field: key=value (repeatable). study.* and objective.* "
            "keys set the study config; any other key (optim.epochs=2, or objective.base.KEY) "
            "the base training config of a train objective.",
        ),
    ] = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Search hyperparameters (or model family + hyperparameters) as CONFIG says.

    The study ends with exactly --trials finished (complete or pruned) trials, each a
    distinct configuration, however many workers and machines share it; failed trials are
    replaced. A second `slem hpo` on the same --out stops with an error. The best
    configuration goes to OUT/best.yaml (for a train objective: `slem train OUT/best.yaml`
    runs it); --refit trains it once more into OUT/refit/.
    """
    from slem.report import write_study_plots  # here: matplotlib only when a study runs

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the table and summary say it all
    set_threads(threads)  # this process and, through --threads, every worker it starts
    if worker:
        if config is None or storage is None:
            raise SlemError("--worker needs CONFIG and --storage")
        run_spawned_worker(config, storage, trials)
        return
    if config is None:
        if not (resume and out is not None):
            raise SlemError("give a CONFIG.yaml (see examples/), or --resume --out RUN_DIR")
        cfg = read_hpo_config(out)
        if set_:
            cfg = load_study_config(out / CONFIG_FILE, set_, values=read_run_file(out))
    else:
        cfg = load_study_config(config, set_ or [])
    run_dir = out or Path("runs") / f"hpo-{cfg.study.name}"
    if cfg.study.strategy == "hypergradient":
        refuse_blackbox_options(storage, workers, trials, refit)
        run_gradient_study(cfg, run_dir, resume, quiet)
        return
    if resume:
        check_resume(cfg, run_dir, storage)
    else:
        check_fresh(run_dir, storage)
    if refit:
        check_refit_dir(run_dir)
    total = trials or cfg.study.trials
    objective = build_objective(cfg)  # the space, the data, the grid: before any write
    starts = [] if resume else meta_learned_starts(cfg, objective)
    url = storage or default_storage(run_dir)
    if storage is not None:
        open_storage(url, cfg.study)  # reachable, before any write
    with lock_run_dir(run_dir, "slem hpo"), storage_errors(url):
        if resume:
            check_study_database(run_dir, storage, resume)
        else:
            check_fresh(run_dir, storage)  # again, now that no other slem hpo can write here
        study = joined(cfg, url, objective, create=not resume)
        plots = functools.partial(write_study_plots, metric=cfg.objective.metric)
        target = planned(study, objective, total)
        write_run_file(cfg, run_dir, storage, total)
        enqueue_starts(study, starts)
        failure: SlemError | None = None
        try:
            if workers > 1:
                failure = run_spawned(run_dir, url, workers, total, study, target, quiet, threads)
            else:
                run_here(cfg, study, objective, total, target, quiet)
        except StudyFailed as exc:
            failure = exc
        except KeyboardInterrupt:
            write_results(study, run_dir, target, plots, objective)
            err_console.print(
                f"interrupted: continue with 'slem hpo --resume --out {run_dir}'", highlight=False
            )
            raise typer.Exit(code=130) from None
        summary = write_results(study, run_dir, target, plots, objective)
        report(study, summary, run_dir, total, target, quiet, isinstance(objective, TrainTrial))
        if failure is not None:
            raise failure
        finished = tally(study).finished
        if finished < target:
            if cfg.study.timeout is None:
                raise SlemError(
                    f"study '{cfg.study.name}' ended with {finished} of {target} finished "
                    f"trials; continue it with 'slem hpo --resume --out {run_dir}'"
                )
            console.print(
                f"study.timeout reached; continue with 'slem hpo --resume --out {run_dir}'",
                highlight=False,
            )
        if refit:
            run_refit(study, objective, run_dir, quiet)


def run_refit(
    study: optuna.Study, objective: CashTrial | TrainTrial, run_dir: Path, quiet: bool
) -> None:
    """``--refit``: the best trial's configuration trained once more into ``run_dir/refit``
    (a train objective: a ``slem train`` run directory; CASH: the pipeline fitted on train +
    validation, saved with skops); says where it is and its scores."""
    rows = best_rows(study, 1)
    if not rows:
        raise SlemError("--refit: no trial completed, so there is no configuration to refit")
    best = rows[0]
    out = run_dir / REFIT_DIR
    if isinstance(objective, CashTrial):
        info = refit_cash(objective, best, study.study_name, run_dir)
        metric = info["metric"]
        console.print(
            f"refit: {out / PIPELINE_FILE} (trial {best.number}'s pipeline fitted on train + "
            f"validation, {info['rows']} rows; load it with slem.automl.cash.load_pipeline; "
            f"feature and class names in {PIPELINE_INFO}): test {metric} {info['test']:.4f}; "
            f"validation {metric} {best.value:.4f} in the study (fitted on train); use it: "
            f"slem predict {run_dir} --data NEW.csv",
            highlight=False,
            soft_wrap=True,
        )
        return
    from slem.cli.train_cmd import run_and_report

    config = best_train_config(objective, best.params)
    record = run_and_report(config, out, resume=False, quiet=quiet)
    metric = objective.config.metric
    final = record.history[-1].get(metric) if record.history else None
    test = {k: v for k, v in record.summary.items() if k.startswith("test_") and v is not None}
    scores = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    console.print(
        f"refit: {out / 'model.safetensors'} (trial {best.number}'s config): {metric} "
        f"{_score(final)} (final epoch; {best.value:.4f} in the study); {scores}; use it: "
        f"slem predict {run_dir} --data NEW.csv",
        highlight=False,
        soft_wrap=True,
    )


def report(
    study: optuna.Study,
    summary: dict[str, Any],
    run_dir: Path,
    total: int,
    target: int,
    quiet: bool,
    train: bool = False,
) -> None:
    """The final table (when no live one was shown), the tally, the best trial, its
    ``best.yaml`` (``train``: how to run it) and the run directory, each on its own line."""
    if not quiet and not console.is_terminal:
        console.print(progress_table(study, target))
    console.print(tally_line(study, target), highlight=False, soft_wrap=True)
    if target < total:
        console.print(
            f"the search space holds only {target} distinct configurations: each was tried "
            f"once ({total} trials asked for)",
            highlight=False,
            soft_wrap=True,
        )
    if "best_value" in summary:
        console.print(
            f"best trial {summary['best_trial']}: value {summary['best_value']:.4f} "
            f"(validation); test {summary['best_test'] or 'n/a'}; params {summary['best_params']}"
            f"; source {summary['best_source']}",
            highlight=False,
            soft_wrap=True,
        )
        if "best_config" in summary:
            path = summary["best_config"]
            name = f"runs/{study.study_name}-best"
            run = f"; run it with 'slem train {path} --out {name}'" if train else ""
            console.print(f"best config: {path}{run}", highlight=False, soft_wrap=True)
    else:
        console.print("no trial completed; see trials.csv for the errors", highlight=False)
    console.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)


def run_spawned_worker(config: Path, url: str, trials: int | None) -> None:
    """``slem hpo --worker``: one of the processes a parent ``slem hpo --workers N`` starts;
    it dies with its parent."""
    watch_parent()
    cfg = load_study_config(config)
    with storage_errors(url):
        run_worker(cfg, url, trials=trials or cfg.study.trials)


def run_here(
    cfg: HPOConfig, study: optuna.Study, objective: Any, total: int, target: int, quiet: bool
) -> None:
    """The study in this process, with a live table on a terminal."""
    if quiet or not console.is_terminal:
        work(study, objective, total, cfg.study.timeout)
        return
    with Live(progress_table(study, target), console=console, refresh_per_second=2) as live:

        def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            live.update(progress_table(study, target))

        work(study, objective, total, cfg.study.timeout, callbacks=[show])
        live.update(progress_table(study, target))


def run_spawned(
    run_dir: Path,
    url: str,
    n: int,
    total: int,
    study: optuna.Study,
    target: int,
    quiet: bool,
    threads: int | None = None,
) -> SlemError | None:
    """``n`` worker processes on the study; a live table on a terminal. Returns the error of
    a worker when the study did not reach its trials."""
    import threading

    codes: list[int] = []
    failed: list[BaseException] = []

    def spawn() -> None:
        try:
            codes.extend(spawn_workers(run_dir / CONFIG_FILE, run_dir, url, n, total, threads))
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)

    thread = threading.Thread(target=spawn, name="workers")
    thread.start()
    try:
        if quiet or not console.is_terminal:
            thread.join()
        else:
            with Live(progress_table(study, target), console=console, refresh_per_second=1) as live:
                while thread.is_alive():
                    live.update(progress_table(study, target))
                    thread.join(1.0)
                live.update(progress_table(study, target))
    except KeyboardInterrupt:
        thread.join()
        raise
    if failed:
        raise SlemError(f"could not start the workers: {failed[0]}")
    if any(codes):
        err_console.print(f"worker exit codes: {codes}", highlight=False)
        if tally(study).finished < target:
            why = worker_error(run_dir, n) or f"see {run_dir}/worker-*.log"
            return SlemError(f"study '{study.study_name}' stopped: {why}")
    return None


def meta_dataset(
    out: Annotated[
        Path,
        typer.Option(
            help="Where to write it: a JSON file (default: meta_dataset.json in the current "
            "directory; the meta-dataset shipped with slem is never overwritten). Use it with "
            "study.meta_dataset in a study config."
        ),
    ] = Path("meta_dataset.json"),
    trials: Annotated[int, typer.Option(min=1, help="CASH trials per table.")] = 30,
    per_task: Annotated[int, typer.Option(min=1, help="Candidates kept per table.")] = 2,
    tables: Annotated[
        int | None, typer.Option(min=1, help="Only the first N meta-training tables.")
    ] = None,
    seed: int = 0,
) -> None:
    """Build the meta-dataset for warm start, zero-shot and portfolios: a CASH study on every
    meta-training table (slem.automl.tables), then every task's best configurations scored
    on every other task. Writes --out (default ./meta_dataset.json), never the installed
    package."""
    from slem.automl.build import build_meta_dataset, check_meta_dataset_out
    from slem.automl.tables import META_TRAIN_TABLES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_meta_dataset_out(out)
    specs = META_TRAIN_TABLES[:tables] if tables else META_TRAIN_TABLES
    store = build_meta_dataset(
        specs, trials, per_task, seed, log=lambda m: console.print(m, highlight=False)
    )
    path = store.save(out)
    console.print(
        f"meta-dataset: {len(store.tasks)} tasks, {len(store.candidates)} candidates -> {path}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("hpo")(user_errors(hpo))
    app.command("meta-dataset")(user_errors(meta_dataset))
