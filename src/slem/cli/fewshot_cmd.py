"""``slem fewshot``: meta-train a few-shot learner, and evaluate one on new tasks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from slem.cli.console import ThreadsOption, console, set_threads, user_errors
from slem.cli.train_cmd import (
    QuietOption,
    SetOption,
    reject_with_resume,
    report_stopped,
    stop_on_signals,
)
from slem.errors import SlemError
from slem.rundir import atomic_write_text, lock_run_dir, make_run_dir
from slem.train.checkpoint_io import read_yaml_mapping
from slem.train.config import apply_overrides, load_yaml
from slem.train.guard import TrainingStopped
from slem.train.run import check_new_run_dir
from slem.train.trainer import Stoppable

app = typer.Typer(
    help="Few-shot meta-learning: MAML, first-order MAML, Reptile, Meta-SGD, ANIL, iMAML, "
    "prototypical and matching networks.",
    no_args_is_help=True,
)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Directory of the offline data (Omniglot zips); default $SLEM_DATA."
    ),
]


@app.command("train")
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML of FewShotConfig.")] = None,
    learner: Annotated[str | None, typer.Option(help="maml, fomaml, reptile, ...")] = None,
    source: Annotated[str | None, typer.Option(help="omniglot, sinusoid, ...")] = None,
    iterations: Annotated[int | None, typer.Option(help="Meta steps.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    data_dir: DataDirOption = None,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory.")] = None,
    set_: SetOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Meta-train on episodes of one task family; select on meta-validation tasks; report
    the meta-test accuracy (or MSE) with its 95% interval."""
    from slem.report import write_run_plots
    from slem.train.few_shot import few_shot_run, parse_few_shot_config

    set_threads(threads)
    if resume is not None:
        reject_with_resume(
            {
                "CONFIG": config,
                "--learner": learner,
                "--source": source,
                "--iterations": iterations,
                "--seed": seed,
                "--out": out,
                "--set": set_,
            }
        )
        values: dict[str, Any] = _read_config(resume)
        if data_dir is not None:
            values["data"] = {**(values.get("data") or {}), "data_dir": str(data_dir)}
        cfg = parse_few_shot_config(values)
        run_dir = resume
    else:
        values = load_yaml(config) if config is not None else {}
        given: dict[str, Any] = {"learner": learner, "iterations": iterations, "seed": seed}
        values.update({k: v for k, v in given.items() if v is not None})
        data = dict(values.get("data") or {})
        if source is not None:
            data["source"] = source
        if data_dir is not None:
            data["data_dir"] = str(data_dir)
        values["data"] = data
        cfg = parse_few_shot_config(apply_overrides(values, set_ or []))
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = out or Path("runs") / f"{stamp}-fewshot-{cfg.learner}-{cfg.data.source}"
    trainers: list[Stoppable] = []
    try:
        with lock_run_dir(run_dir, "slem fewshot train"):
            if resume is None:
                check_new_run_dir(run_dir, "slem fewshot train")
                atomic_write_text(
                    run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"))
                )
            with stop_on_signals(trainers):
                record = few_shot_run(
                    cfg, run_dir, resume is not None, not quiet, trainers.append, write_run_plots
                )
    except TrainingStopped as exc:
        report_stopped(exc, run_dir, "slem fewshot train")
    s = record.summary
    metric = "accuracy" if "test_accuracy" in s else "mse"
    unit = "%" if metric == "accuracy" else ""
    task = f"{s['ways']}-way {s['shots']}-shot" if s["ways"] else f"{s['shots']}-shot regression"
    console.print(
        f"{cfg.learner} on {cfg.data.source} ({task}): meta-test {metric} "
        f"{s[f'test_{metric}']:.2f}{unit} ± {s['test_ci95']:.2f} (95% interval, "
        f"{s['test_episodes']} new tasks; selected at meta step {s['selected_iteration']} on "
        "meta-validation)",
        soft_wrap=True,
    )
    if "lake_20way_error" in s:
        console.print(
            f"Lake et al.'s 20 runs of 20-way one-shot: error {s['lake_20way_error']:.1f}% "
            "(humans 4.5%)",
            soft_wrap=True,
        )
    console.print(f"run directory: {run_dir}", soft_wrap=True)


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise SlemError(f"run directory '{run_dir}' does not exist; nothing to resume")
    if not path.is_file():
        raise SlemError(f"'{run_dir}' is not a fewshot run directory (no config.yaml)")
    return read_yaml_mapping(path, "restore it from a copy, or start a new run with another --out")


@app.command("eval")
@user_errors
def evaluate_cmd(
    artifact: Annotated[Path, typer.Argument(help="A few-shot learner (a run directory).")],
    ways: Annotated[int | None, typer.Option(help="N of N-way (default: as trained).")] = None,
    shots: Annotated[int | None, typer.Option(help="K of K-shot (default: as trained).")] = None,
    queries: Annotated[int, typer.Option(help="Query examples per class (task).")] = 15,
    episodes: Annotated[int, typer.Option(help="New tasks to average over.")] = 600,
    steps: Annotated[
        int | None, typer.Option(help="Inner steps (default: as meta-trained).")
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="test (the meta-test classes), val, train, or lake (Omniglot's 20 runs of "
            "20-way one-shot)."
        ),
    ] = "test",
    seed: Annotated[int, typer.Option(help="Seed of the episodes.")] = 0,
    data_dir: DataDirOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
    threads: ThreadsOption = None,
) -> None:
    """The frozen learner on new tasks: mean and 95% interval over ``--episodes`` tasks."""
    from slem.methodology import load_methodology
    from slem.methodology.few_shot import FewShotLearner
    from slem.train.few_shot import FewShotConfig, evaluate, lake_error, load_pools, make_sampler

    set_threads(threads)
    if episodes < 1 or queries < 1:
        raise SlemError("--episodes and --queries must be at least 1")
    if split not in ("test", "val", "train", "lake"):
        raise SlemError(f"--split must be test, val, train or lake, not '{split}'")
    learner, meta = load_methodology(artifact)
    if not isinstance(learner, FewShotLearner):
        raise SlemError(
            f"'{artifact}' holds a '{learner.kind}' methodology, not a few-shot learner; "
            "pass the run directory of slem fewshot train"
        )
    cfg = FewShotConfig.model_validate(meta.get("training_config") or {})
    if data_dir is not None:
        cfg.data.data_dir = str(data_dir)
    if split == "lake":
        if cfg.data.source != "omniglot":
            raise SlemError(
                f"--split lake is Omniglot's; this learner was meta-trained on {cfg.data.source}"
            )
        learner.check_ways(20)
        error = lake_error(learner, cfg.data, steps)
        console.print(
            f"Lake et al.'s 20 runs of 20-way one-shot: error {error:.1f}% (humans 4.5%)",
            soft_wrap=True,
        )
        result: dict[str, object] = {"split": "lake", "error": error}
    else:
        n_ways = cfg.task_ways if ways is None else (0 if cfg.task_ways == 0 else ways)
        learner.check_ways(n_ways)
        pools = load_pools(cfg.data, cfg.seed)
        pool = {"test": pools.test, "val": pools.val, "train": pools.train}[split]
        sampler = make_sampler(pool, n_ways, shots or cfg.shots, queries, seed)
        score = evaluate(learner, sampler, episodes, steps)
        unit = "%" if score["metric"] == "accuracy" else ""
        task = f"{n_ways}-way {shots or cfg.shots}-shot" if n_ways else "regression"
        console.print(
            f"{learner.kind} on {cfg.data.source} {split} ({task}): {score['metric']} "
            f"{score['mean']:.2f}{unit} ± {score['ci95']:.2f} (95% interval, {episodes} tasks)",
            soft_wrap=True,
        )
        result = {"split": split, "ways": n_ways, "shots": shots or cfg.shots, **score}
    if out is not None:
        make_run_dir(out.parent if out.suffix else out)
        path = out if out.suffix else out / "fewshot_eval.json"
        atomic_write_text(path, json.dumps({"artifact": str(artifact), **result}, indent=2))
        console.print(f"wrote {path}", soft_wrap=True)
