"""``slem fewshot``: meta-train a few-shot learner, and evaluate one on new tasks."""

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
from slem.rundir import atomic_write_text, make_run_dir
from slem.train.config import apply_overrides, load_yaml

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
    learner: Annotated[
        str | None,
        typer.Option(help="maml, fomaml, reptile, metasgd, anil, imaml, protonet or matching."),
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="omniglot, sinusoid, fashion_mnist or mnist1d.")
    ] = None,
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
        values: dict[str, Any] = read_config_values(resume, "fewshot")
        if "learner" not in values:
            raise SlemError(
                f"'{resume}' is not a slem fewshot run (its config.yaml names no learner); "
                "resume it with the command that started it"
            )
        if data_dir is not None:
            values["data"] = {**_mapping(values.get("data")), "data_dir": _absolute(data_dir)}
        cfg = parse_few_shot_config(values)
        run_dir = resume
    else:
        values = load_yaml(config) if config is not None else {}
        given: dict[str, Any] = {"learner": learner, "iterations": iterations, "seed": seed}
        values.update({k: v for k, v in given.items() if v is not None})
        data = _mapping(values.get("data"))
        if source is not None:
            data["source"] = source
        if data_dir is not None:
            data["data_dir"] = _absolute(data_dir)
        values["data"] = data
        cfg = parse_few_shot_config(apply_overrides(values, set_ or []))
        if cfg.data.data_dir is not None:  # the run resumes and evaluates from anywhere
            cfg.data.data_dir = _absolute(Path(cfg.data.data_dir))
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = out or Path("runs") / f"{stamp}-fewshot-{cfg.learner}-{cfg.data.source}"
    record = run_meta_learner(
        run_dir, "slem fewshot train", cfg, resume is not None, quiet, few_shot_run
    )
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


def _mapping(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SlemError(f"data must be a mapping, e.g. 'data: {{source: sinusoid}}', not {value!r}")
    return dict(value)


def _absolute(path: Path) -> str:
    return str(path.expanduser().resolve())


@app.command("eval")
@user_errors
def evaluate_cmd(
    artifact: Annotated[Path, typer.Argument(help="A few-shot run directory.")],
    ways: Annotated[
        int | None,
        typer.Option(help="N of N-way (default: as trained; MAML-family learners only at that N)."),
    ] = None,
    shots: Annotated[int | None, typer.Option(help="K of K-shot (default: as trained).")] = None,
    queries: Annotated[
        int | None, typer.Option(help="Query examples per class (per task for sinusoids).")
    ] = None,
    episodes: Annotated[int | None, typer.Option(help="New tasks to average over.")] = None,
    steps: Annotated[
        int | None, typer.Option(help="Inner steps (default: the run's eval_steps).")
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="test (the meta-test classes), val, train, or lake (Omniglot's 20 runs of "
            "20-way one-shot)."
        ),
    ] = "test",
    seed: Annotated[int | None, typer.Option(help="Seed of the episodes.")] = None,
    data_dir: DataDirOption = None,
    out: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
    threads: ThreadsOption = None,
) -> None:
    """The frozen learner on new tasks: mean and 95% interval over ``--episodes`` tasks. With
    no option it draws the run's own meta-test tasks (its seed, ways, shots, queries,
    episodes and inner steps), so it reproduces the score in the run's summary.json."""
    from slem.train.few_shot import evaluate, lake_error, load_learner_run, load_pools, make_sampler

    set_threads(threads)
    for name, value, least in (
        ("--ways", ways, 2),
        ("--shots", shots, 1),
        ("--queries", queries, 1),
        ("--episodes", episodes, 1),
        ("--steps", steps, 0),
    ):
        if value is not None and value < least:
            raise SlemError(f"{name} must be at least {least}, got {value}")
    if split not in ("test", "val", "train", "lake"):
        raise SlemError(f"--split must be test, val, train or lake, not '{split}'")
    learner, cfg = load_learner_run(artifact, data_dir)
    if steps is not None and steps > 0 and not learner.gradient_based:
        raise SlemError(
            f"{learner.kind} adapts in closed form and takes no inner steps; drop --steps"
        )
    steps = cfg.eval_steps if steps is None else steps
    if split == "lake":
        given = {
            "--ways": ways,
            "--shots": shots,
            "--queries": queries,
            "--episodes": episodes,
            "--seed": seed,
        }
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise SlemError(
                f"--split lake is Lake et al.'s fixed 20 runs of 20-way one-shot; drop "
                f"{', '.join(extra)}"
            )
        if cfg.data.source != "omniglot":
            raise SlemError(
                f"--split lake is Omniglot's; this learner was meta-trained on {cfg.data.source}"
            )
        if learner.gradient_based and learner.ways != 20:
            raise SlemError(
                f"Lake's runs are 20-way; this {learner.kind} learner was meta-trained "
                f"{learner.ways}-way (meta-train one with ways 20, or use protonet or matching)"
            )
        errors = lake_error(learner, cfg.data, steps, per_run=True)
        error = sum(errors) / len(errors)
        console.print(
            f"Lake et al.'s 20 runs of 20-way one-shot: error {error:.1f}% (humans 4.5%)",
            soft_wrap=True,
        )
        result: dict[str, object] = {"split": "lake", "error": error, "per_run_error": errors}
    else:
        if cfg.task_ways == 0 and (ways is not None or split != "test"):
            raise SlemError(
                "sinusoid tasks are generated: they have no ways and no class split; drop "
                + ("--ways" if ways is not None else "--split")
            )
        n_ways = cfg.task_ways if ways is None else ways
        n_shots = shots or cfg.shots
        learner.check_ways(n_ways)
        pools = load_pools(cfg.data, cfg.seed)
        pool = {"test": pools.test, "val": pools.val, "train": pools.train}[split]
        sampler = make_sampler(
            pool,
            n_ways,
            n_shots,
            queries or cfg.queries,
            cfg.seed + 104729 if seed is None else seed,
        )
        score = evaluate(learner, sampler, episodes or cfg.test_episodes, steps)
        unit = "%" if score["metric"] == "accuracy" else ""
        task = f"{n_ways}-way {n_shots}-shot" if n_ways else f"{n_shots}-shot regression"
        ci = f"{score['ci95']:.2f}" if score["episodes"] > 1 else "n/a"
        console.print(
            f"{learner.kind} on {cfg.data.source} {split} ({task}): {score['metric']} "
            f"{score['mean']:.2f}{unit} ± {ci} (95% interval, {score['episodes']} tasks)",
            soft_wrap=True,
        )
        result = {"split": split, "ways": n_ways, "shots": n_shots, "steps": steps, **score}
    if out is not None:
        make_run_dir(out.parent if out.suffix else out)
        path = out if out.suffix else out / "fewshot_eval.json"
        atomic_write_text(path, json.dumps({"artifact": str(artifact), **result}, indent=2))
        console.print(f"wrote {path}", soft_wrap=True)
