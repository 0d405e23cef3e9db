"""``slem predict``: use a trained model on new rows (:mod:`slem.train.predict`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from slem.automl.outputs import load_model
from slem.cli.console import ThreadsOption, console, err_console, set_threads, user_errors
from slem.errors import SlemError
from slem.rundir import atomic_write_text
from slem.train.predict import WEIGHT_CHOICES, Weights


@user_errors
def predict(
    run_dir: Annotated[
        Path,
        typer.Argument(help="A finished run (slem train / apply), or an HPO directory refitted."),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="New rows: the training file's feature columns (the target column may be "
            "absent; when present, the predictions are scored).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the predictions here as CSV (default: to stdout)."),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="chosen: the weights summary.json names (the epoch validation chose); best "
            "or final.",
        ),
    ] = "chosen",
    threads: ThreadsOption = None,
) -> None:
    """Predict labels (in the training file's own label names) and class probabilities, or
    regression targets, for new rows, with the preprocessing the run saved."""
    set_threads(threads)
    if weights not in WEIGHT_CHOICES:
        raise SlemError(f"--weights '{weights}' is unknown; use one of {', '.join(WEIGHT_CHOICES)}")
    if out is not None and out.is_dir():
        raise SlemError(f"--out '{out}' is a directory; give a file name, e.g. {out}/pred.csv")
    trained = load_model(run_dir, cast(Weights, weights))
    if out is not None:
        check_out(out, data, [run_dir, trained.run_dir])
    result = trained.predict_file(data)
    text = result.frame.to_csv(index=False)
    where = (
        f"{trained.weights} weights (epoch {trained.epoch}) of {trained.run_dir}"
        if trained.epoch >= 0
        else f"{trained.weights} of {trained.run_dir}"
    )
    for note in result.notes:
        err_console.print(f"note: {note}")
    score = result.score
    scored = ""
    if score is not None:
        metric = (
            f"accuracy {score['accuracy']:.4f}"
            if "accuracy" in score
            else f"MAE {score['mae']:.4g}, MSE {score['mse']:.4g}"
        )
        scored = f"; {metric} on the {score['rows']} rows with a target"
    if out is None:
        sys.stdout.write(text)
        err_console.print(f"{len(result.frame)} predictions with the {where}{scored}")
        return
    try:
        if out.parent != Path():
            out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    except OSError as exc:
        raise SlemError(f"cannot write --out '{out}': {exc.strerror or exc}") from None
    console.print(f"{len(result.frame)} predictions -> {out} ({where}){scored}", soft_wrap=True)


def check_out(out: Path, data: Path, runs: list[Path]) -> None:
    """Predictions may not overwrite their input or any file of the run that made them.

    Raises:
        SlemError: ``out`` is the ``--data`` file, or lies inside a run directory.
    """
    target = out.resolve()
    if data.exists() and target == data.resolve():
        raise SlemError(f"--out '{out}' is the --data file; write the predictions to another file")
    for run in runs:
        if target.is_relative_to(run.resolve()):
            raise SlemError(
                f"--out '{out}' is inside the run directory '{run}'; write the predictions "
                "outside it (e.g. --out predictions.csv)"
            )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
