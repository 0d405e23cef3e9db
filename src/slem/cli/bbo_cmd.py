"""``slem bbo``: meta-train a learned black-box optimizer, and run it on test functions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import torch
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
from slem.rundir import atomic_write_text, make_run_dir
from slem.train.bbo import bbo_run
from slem.train.config import apply_overrides, load_yaml, parse_bbo_config

app = typer.Typer(help="Learned black-box optimization (Chen et al., 2017).", no_args_is_help=True)


@app.command("train")
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="Optional YAML of BBOConfig.")] = None,
    dim: Annotated[int | None, typer.Option(help="Search-space dimension.")] = None,
    loss: Annotated[str | None, typer.Option(help="sum, oi or ei.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Meta-gradient steps.")] = None,
    steps: Annotated[int | None, typer.Option(help="Queries per search.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory.")] = None,
    set_: SetOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Meta-train the RNN proposer on GP samples, quadratics and standard test functions."""

    set_threads(threads)
    if resume is not None:
        reject_with_resume(
            {
                "CONFIG": config,
                "--dim": dim,
                "--loss": loss,
                "--iterations": iterations,
                "--steps": steps,
                "--seed": seed,
                "--out": out,
                "--set": set_,
            }
        )
        cfg = parse_bbo_config(read_config_values(resume, "bbo"))
        run_dir = resume
    else:
        values = load_yaml(config) if config is not None else {}
        given = {"dim": dim, "loss": loss, "iterations": iterations, "steps": steps, "seed": seed}
        values.update({k: v for k, v in given.items() if v is not None})
        cfg = parse_bbo_config(apply_overrides(values, set_ or []))
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = out or Path("runs") / f"{stamp}-bbo-{cfg.dim}d-{cfg.loss}"
    record = run_meta_learner(run_dir, "slem bbo train", cfg, resume is not None, quiet, bbo_run)
    summary = record.summary
    console.print(
        f"learned black-box optimizer ({cfg.dim}-D, loss {cfg.loss}): mean regret after "
        f"{cfg.steps} queries on 32 unseen GP samples {summary['held_out_regret']:.3f} "
        f"(random search {summary['random_search_regret']:.3f})",
        soft_wrap=True,
    )
    console.print(f"run directory: {run_dir}", soft_wrap=True)


@app.command("run")
@user_errors
def run(
    artifact: Annotated[Path, typer.Argument(help="A learned_bbo methodology directory.")],
    function: Annotated[
        str, typer.Option(help="branin, hartmann3, hartmann6 or gpD (unseen GP samples).")
    ] = "branin",
    budget: Annotated[int, typer.Option(help="Queries per search.")] = 30,
    repeats: Annotated[int, typer.Option(help="Independent searches.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory for regret_FUNCTION.png (the regret curve) and regret_FUNCTION.json "
            "(its numbers); created if needed."
        ),
    ] = None,
    threads: ThreadsOption = None,
) -> None:
    """Search a held-out test function with the frozen optimizer, against random search."""
    set_threads(threads)
    from slem.data.functions import held_out
    from slem.methodology import load_methodology
    from slem.methodology.bbo import RNNBlackBoxOptimizer
    from slem.train.bbo import random_search_regret, search_regret

    if budget < 2 or repeats < 1:
        raise SlemError("--budget must be at least 2 and --repeats at least 1")
    if out is not None and out.exists() and not out.is_dir():
        raise SlemError(f"--out {out} is a file, not a directory; choose another --out")
    net, _ = load_methodology(artifact)
    if not isinstance(net, RNNBlackBoxOptimizer):
        raise SlemError(f"'{artifact}' holds a '{net.kind}' methodology, not learned_bbo")
    functions = held_out(function, batch=repeats)
    learned_curve = search_regret(net, functions, budget, seed)
    random_curve = random_search_regret(functions, budget, seed)
    if out is not None:
        make_run_dir(out)  # before any output: a path under a file is one line
    learned, rand = learned_curve[-1], random_curve[-1]
    ddof = 1 if repeats > 1 else 0

    def stat(r: torch.Tensor) -> str:
        return f"{float(r.mean()):.4f} ± {float(r.std(correction=ddof)):.4f}"

    console.print(
        f"{function}: regret after {budget} queries, mean ± std over {repeats} searches: "
        f"learned {stat(learned)}, random search {stat(rand)}",
        soft_wrap=True,
    )
    if out is not None:
        written = write_regret(
            out,
            {"learned optimizer": learned_curve, "random search": random_curve},
            {
                "artifact": str(artifact),
                "function": function,
                "budget": budget,
                "repeats": repeats,
                "seed": seed,
            },
        )
        console.print(f"wrote {', '.join(str(p) for p in written)}", soft_wrap=True)


def write_regret(
    out: Path, curves: dict[str, torch.Tensor], setting: dict[str, object]
) -> list[Path]:
    """``regret_FUNCTION.json`` (the setting, and per searcher the regret after each query of
    every search and its mean) and ``regret_FUNCTION.png`` into ``out``, each written
    atomically."""
    from slem.report.bbo_plots import regret_curve

    name = str(setting["function"])
    numbers: dict[str, object] = {
        **setting,
        "regret": "simple regret: best value found so far minus the function's minimum",
    }
    for searcher, curve in curves.items():
        r = curve.double()
        numbers[searcher.replace(" ", "_")] = {
            "mean_per_query": r.mean(1).tolist(),
            "per_search": r.T.tolist(),  # one list per search, one value per query
        }
    data = atomic_write_text(out / f"regret_{name}.json", json.dumps(numbers, indent=2) + "\n")
    title = (
        f"{name}: learned black-box optimizer against random search\n"
        f"({setting['budget']} queries per search, {setting['repeats']} searches)"
    )
    png = regret_curve(
        {k: v.double().numpy() for k, v in curves.items()}, out / f"regret_{name}.png", title
    )
    return [png, data]
