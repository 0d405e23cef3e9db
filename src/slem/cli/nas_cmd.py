"""``slem nas``: architecture search of a cell (DARTS or black-box), and what a search found."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from slem.cli.console import ThreadsOption, console, set_threads, user_errors
from slem.cli.train_cmd import (
    QuietOption,
    SetOption,
    read_config_values,
    reject_with_resume,
    run_meta_learner,
)
from slem.errors import SlemError
from slem.train.config import apply_overrides, load_yaml

app = typer.Typer(
    help="Architecture search: DARTS on the bilevel engine, or black-box search (regularized "
    "evolution, TPE, GP, NSGA-II) by training each cell or reading NAS-Bench-201.",
    no_args_is_help=True,
)


@app.command("search")
@user_errors
def search(
    config: Annotated[Path | None, typer.Argument(help="YAML of NasConfig.")] = None,
    method: Annotated[
        str | None, typer.Option("--search", help="darts or blackbox (default: the config's).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory.")] = None,
    set_: SetOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Search a cell for the task; write the cell (architecture.json), a train.yaml that
    trains it from scratch (slem train RUN/train.yaml), the plots and summary.json."""
    import optuna

    from slem.automl.nas_run import check_search, nas_run, parse_nas_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the summary says it all
    set_threads(threads)
    if resume is not None:
        reject_with_resume(
            {"CONFIG": config, "--search": method, "--seed": seed, "--out": out, "--set": set_}
        )
        values: dict[str, Any] = read_config_values(resume, "nas")
        if "space" not in values or "darts" not in values:
            raise SlemError(
                f"'{resume}' is not a slem nas run (its config.yaml has no space); resume it "
                "with the command that started it"
            )
        cfg = parse_nas_config(values)
        run_dir = resume
    else:
        if config is None:
            raise SlemError("give a config: slem nas search CONFIG.yaml (see examples/nas_*.yaml)")
        values = load_yaml(config)
        given = {"search": method, "seed": seed}
        values.update({k: v for k, v in given.items() if v is not None})
        cfg = parse_nas_config(apply_overrides(values, set_ or []))
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = out or Path("runs") / f"{stamp}-nas-{cfg.search}"
        check_search(cfg)  # a task that cannot be searched fails before anything is written
    record = run_meta_learner(run_dir, "slem nas search", cfg, resume is not None, quiet, nas_run)
    s = record.summary
    if s.get("genotype"):
        console.print(f"cell: {s['genotype']} (skip connections: {_skips(s)})", soft_wrap=True)
    if "best_accuracy" in s:
        line = f"best validation accuracy {s['best_accuracy']:.2f}% in {s['trials']} trials"
        if "regret" in s:
            line += f" (table optimum {s['table_optimum']:.2f}%, regret {s['regret']:.2f})"
        console.print(line, soft_wrap=True)
    if "hypervolume" in s:
        console.print(
            f"Pareto front: {len(s['pareto_trials'])} cell(s), hypervolume {s['hypervolume']:.4g}",
            soft_wrap=True,
        )
    if s.get("train_config"):
        console.print(f"train it from scratch: slem train {s['train_config']}", soft_wrap=True)
    console.print(f"run directory: {run_dir}", soft_wrap=True)


def _skips(summary: dict[str, Any]) -> str:
    """How many of the cell's edges are skip connections (slem's or NAS-Bench-201's names)."""
    text = str(summary["genotype"])
    return f"{text.count('skip_connect~')} of {text.count('~')} edges"


@app.command("show")
@user_errors
def show(
    run_dir: Annotated[Path, typer.Argument(help="A slem nas search run directory.")],
) -> None:
    """Print what a search found (its summary.json)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        raise SlemError(f"'{run_dir}' holds no summary.json: not a finished slem nas search run")
    summary = json.loads(path.read_text())
    if not isinstance(summary, dict) or not ({"genotype", "search"} & set(summary)):
        raise SlemError(f"'{run_dir}' is not a slem nas search run (its summary names no cell)")
    console.print_json(json.dumps(summary))
