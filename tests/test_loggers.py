"""Metric loggers: ``loggers: [csv, tensorboard]`` / ``--logger``: ``metrics.csv`` holds the rows
of ``metrics.jsonl`` (also after a resume), TensorBoard's event files hold the scalars, and a
missing tensorboard package is one line before anything is written."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from slem.cli.app import app
from slem.errors import SlemError
from slem.train import TrainConfig
from slem.train.callbacks import Callback, csv_text
from slem.train.guard import TrainingStopped
from slem.train.run import train_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["--set", "data.size=600", "--set", "optim.epochs=2", "--set", "model.width=8", "--quiet"]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _same_rows(csv_rows: list[dict[str, str]], rows: list[dict[str, Any]]) -> None:
    assert len(csv_rows) == len(rows)
    for got, want in zip(csv_rows, rows, strict=True):
        assert set(got) >= set(want)
        for key, value in want.items():
            if value is None:
                assert got[key] == ""
            elif isinstance(value, int | float):
                assert float(got[key]) == value, key  # written at full precision
            else:
                assert got[key] == str(value)


def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _same_scalars(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)  # float32


def test_csv_and_tensorboard_loggers_hold_the_epoch_metrics(
    runner: CliRunner, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    args = ["train", str(EXAMPLES / "erm_mnist1d.yaml"), "--out", str(run), *SMALL]
    result = runner.invoke(app, [*args, "--logger", "csv", "--logger", "tensorboard"])
    assert result.exit_code == 0, result.stderr
    rows = _jsonl(run / "metrics.jsonl")
    _same_rows(_csv(run / "metrics.csv"), rows)
    config = (run / "config.yaml").read_text()
    assert "loggers:\n- csv\n- tensorboard" in config
    scalars = _scalars(run / "tensorboard")
    for key in ("val_accuracy", "train_loss", "lr"):
        _same_scalars(scalars[f"epoch/{key}"], [(r["step"], r[key]) for r in rows])
    steps = scalars["step/loss"]
    assert [s for s, _ in steps] == list(range(1, rows[-1]["step"] + 1))


def test_csv_header_is_the_union_of_the_keys() -> None:
    text = csv_text([{"epoch": 1, "a": 0.5}, {"epoch": 2, "b": None, "c": [1, 2]}])
    assert text.splitlines() == ["epoch,a,b,c", "1,0.5,,", '2,,,"[1, 2]"']


class StopAt(Callback):
    """Aborts the run after global step ``step``: it resumes from an older checkpoint and
    trains the steps after it again."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Any, stats: dict[str, float]) -> None:
        if trainer.progress.global_step == self.step:
            trainer.request_stop("aborted")  # no checkpoint: the last one is older


def test_a_resumed_run_logs_every_epoch_once(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config = TrainConfig(
        method="erm",
        data={"name": "mnist1d", "size": 600},
        model={"width": 8},
        optim={"epochs": 3, "batch_size": 64},
        loggers=["csv", "tensorboard"],
        threads=1,
        checkpoint_every=4,
    )
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped):  # mid-epoch 2, after a mid-epoch checkpoint
        train_run(config, run, progress=False, extra_callbacks=[StopAt(11)])
    assert len(_csv(run / "metrics.csv")) == 1
    train_run(config, run, resume=True, progress=False)
    rows = _jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    _same_rows(_csv(run / "metrics.csv"), rows)
    val = _scalars(run / "tensorboard")["epoch/val_accuracy"]
    _same_scalars(val, [(r["step"], r["val_accuracy"]) for r in rows])
    steps = [s for s, _ in _scalars(run / "tensorboard")["step/loss"]]
    assert steps == list(range(1, rows[-1]["step"] + 1))


def test_tensorboard_without_its_package_is_one_line(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run = tmp_path / "run"
    args = ["train", str(EXAMPLES / "erm_mnist1d.yaml"), "--out", str(run), *SMALL]
    result = runner.invoke(app, [*args, "--logger", "tensorboard"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'slem[tensorboard]'" in lines[0], lines
    assert not run.exists()  # refused before anything was written
    with pytest.raises(SlemError, match=re.escape("slem[tensorboard]")):
        train_run(TrainConfig(method="erm", data={"name": "mnist1d"}, loggers=["tensorboard"]), run)
    assert not run.exists()


def test_unknown_loggers_are_one_line(runner: CliRunner, tmp_path: Path) -> None:
    base = ["train", str(EXAMPLES / "erm_mnist1d.yaml"), "--out", str(tmp_path / "r")]
    result = runner.invoke(app, [*base, "--logger", "wandb"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --logger wandb: unknown logger; use csv or tensorboard"
    result = runner.invoke(app, [*base, "--set", "loggers=[csv, wandb]"])
    assert result.exit_code == 2 and "loggers.1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
