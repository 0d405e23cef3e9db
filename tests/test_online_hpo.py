"""Method hypergradient (the learning rate and weight decay tuned during one run) and
``slem hpo`` with ``study.strategy: hypergradient``. Tiny runs: a 300-row MNIST-1D split,
width-8 CNN, 1-2 epochs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from slem.data import build_task
from slem.errors import SlemError
from slem.train import make_trainer, parse_train_config
from tests.test_cli_robustness import one_line_error

BASE: dict[str, Any] = {
    "method": "hypergradient",
    "data": {"name": "mnist1d", "train_size": 300, "val_fraction": 0.3, "seed": 0},
    "model": {"arch": "cnn1d", "width": 8},
    "optim": {"epochs": 2, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "momentum": 0.9},
    "hypergradient": {"horizon": 4},
    "threads": 1,
}


@pytest.fixture(scope="module")
def task() -> Any:
    return build_task(parse_train_config(BASE).data)


def _config(**changes: Any) -> Any:
    values = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            values[section][field] = value
        else:
            values[section] = value
    return parse_train_config(values)


def test_a_small_rate_grows_and_the_trajectory_is_recorded(task: Any) -> None:
    """From a rate 100x too small, the hypergradient raises it at every update; the record
    holds the trajectory from the starting values, the summary the tuned values."""
    trainer = make_trainer(_config(), task)
    result = trainer.fit(progress=False)
    lrs = [r["lr"] for r in trainer.trace]
    assert len(lrs) == trainer.progress.global_step // 4
    print(lrs)
    assert lrs[-1] > 2.5e-3 and lrs == sorted(lrs)
    assert result.summary["tuned_lr"] == pytest.approx(lrs[-1])
    record = trainer.record(result)
    assert record.arrays["hyper_lr"][0] == 1e-3 and math.isnan(record.arrays["hyper_outer_loss"][0])
    assert len(record.arrays["hyper_step"]) == len(lrs) + 1
    assert result.history[-1]["weight_decay"] == pytest.approx(trainer.current("weight_decay"))
    # the real optimizer stepped with the tuned values (the schedule times the base rate)
    group = trainer.optimizer.param_groups[0]
    assert group["weight_decay"] == pytest.approx(trainer.current("weight_decay"))


def test_only_the_listed_hyperparameters_move(task: Any) -> None:
    trainer = make_trainer(_config(hypergradient__tune=["weight_decay"]), task)
    trainer.fit(progress=False)
    assert {r["lr"] for r in trainer.trace} == {1e-3}
    assert trainer.trace[-1]["weight_decay"] != 1e-4


def test_state_round_trip(task: Any) -> None:
    """A checkpoint carries the hyperparameters, their optimizer, the tangents and the
    trajectory."""
    trainer = make_trainer(_config(hypergradient__horizon=7), task)
    trainer.fit(progress=False)
    state = trainer.state()
    assert trainer.tangents.steps > 0  # mid-horizon: the tangents are part of the state
    other = make_trainer(_config(hypergradient__horizon=7), task)
    other.load_state(state)
    assert other.current("lr") == trainer.current("lr")
    assert other.trace == trainer.trace and other.tangents.steps == trainer.tangents.steps
    assert other.tangents.params is not None and trainer.tangents.params is not None
    for k, v in trainer.tangents.params.items():
        assert torch.equal(other.tangents.params[k], v)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optim__weight_decay": 0.0}, "set optim.weight_decay > 0"),
        ({"optim__lr": 50.0}, "move optim.lr inside"),
        ({"optim__optimizer": "rmsprop"}, "follows SGD and Adam"),
        ({"hypergradient__horizon": 10_000}, "longer than the run"),
    ],
)
def test_bad_settings_are_one_line(task: Any, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SlemError, match=message) as err:
        make_trainer(_config(**changes), task)
    assert "\n" not in str(err.value)


def test_bad_section_values_are_refused() -> None:
    with pytest.raises(SlemError, match="lr_range"):
        _config(hypergradient={"lr_range": [1.0, 0.1]})


# ---------------------------------------------------------------------- slem hpo


def _study(tmp_path: Path, **study: Any) -> Path:
    base = {k: v for k, v in BASE.items() if k != "hypergradient"}
    base = {**base, "method": "erm", "optim": {**BASE["optim"], "epochs": 1}}
    doc = {
        "study": {"name": "hg", "strategy": "hypergradient", **study},
        "objective": {
            "kind": "train",
            "base": base,
            "space": {
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
                "optim.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
            },
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_hpo_hypergradient_strategy_end_to_end(runner: CliRunner, tmp_path: Path) -> None:
    """One run per start, the best by validation score, its config runnable; --resume
    reads the finished starts back instead of training them again."""
    config = _study(tmp_path, hypergradient={"starts": [0.001, 0.1]})
    out = tmp_path / "run"
    result = runner.invoke(app, ["hpo", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.stdout + result.stderr
    best = json.loads((out / "best.json").read_text())
    runs = best["runs"]
    assert [r["start_lr"] for r in runs] == [0.001, 0.1]
    assert best["best"]["val_score"] == max(r["val_score"] for r in runs)
    assert (out / "start-1" / "model.safetensors").is_file()
    assert (out / "plots" / "hyperparameters.png").is_file()
    trajectories = (out / "trajectories.csv").read_text().splitlines()
    assert len(trajectories) > 4 and trajectories[0].startswith("start,start_lr,step")
    cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert cfg["method"] == "hypergradient"
    assert cfg["hypergradient"]["tune"] == ["lr", "weight_decay"]
    hint = one_line_error(runner.invoke(app, ["predict", str(out), "--data", str(config)]))
    assert "hypergradient study" in hint and "start-0, start-1" in hint
    summary = (out / "start-0" / "summary.json").stat().st_mtime_ns
    (out / "best.json").unlink()
    again = runner.invoke(app, ["hpo", "--resume", "--out", str(out), "--quiet"])
    assert again.exit_code == 0, again.stdout + again.stderr
    assert (out / "start-0" / "summary.json").stat().st_mtime_ns == summary
    assert json.loads((out / "best.json").read_text())["runs"] == runs
    assert "already holds a study" in one_line_error(
        runner.invoke(app, ["hpo", str(config), "--out", str(out)])
    )


@pytest.mark.parametrize(
    ("space", "study", "args", "message"),
    [
        (
            {"meta.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
            {},
            [],
            "'meta.lr' has no hypergradient",
        ),
        ({"optim.lr": {"type": "float", "low": 1e-4, "high": 1.0}}, {}, [], "log: true"),
        (None, {"hypergradient": {"starts": [3.0]}}, [], "outside the optim.lr range"),
        (None, {}, ["--workers", "2"], "--workers applies to study.strategy blackbox"),
        (None, {}, ["--set", "objective.metric=val_loss"], "val_loss applies to study.strategy"),
        (None, {}, ["--set", "data.name=no_such_data"], "no_such_data"),
    ],
)
def test_hpo_hypergradient_refusals(
    runner: CliRunner,
    tmp_path: Path,
    space: dict[str, Any] | None,
    study: dict[str, Any],
    args: list[str],
    message: str,
) -> None:
    config = _study(tmp_path, **study)
    if space is not None:
        doc = yaml.safe_load(config.read_text())
        doc["objective"]["space"] = space
        config.write_text(yaml.safe_dump(doc))
    line = one_line_error(
        runner.invoke(app, ["hpo", str(config), "--out", str(tmp_path / "r"), *args])
    )
    assert message in line
    assert not (tmp_path / "r").exists()


def test_starts_need_a_learning_rate_range(runner: CliRunner, tmp_path: Path) -> None:
    config = _study(tmp_path, hypergradient={"starts": [0.01]})
    doc = yaml.safe_load(config.read_text())
    del doc["objective"]["space"]["optim.lr"]
    config.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["hpo", str(config), "--out", str(tmp_path / "r")])
    assert "does not tune optim.lr" in one_line_error(result)


def test_ranges_keep_the_tuned_values_inside(task: Any) -> None:
    trainer = make_trainer(
        _config(hypergradient={"horizon": 2, "lr": 2.0, "lr_range": [5e-4, 2e-3]}), task
    )
    trainer.fit(progress=False)
    assert all(5e-4 - 1e-12 <= r["lr"] <= 2e-3 + 1e-12 for r in trainer.trace)
    assert np.isclose(max(r["lr"] for r in trainer.trace), 2e-3)


def test_memory_one_keeps_the_whole_trajectory(task: Any) -> None:
    """memory 1: the tangents span every step so far (RTHO); 0: only those since the last
    update."""
    kept = make_trainer(_config(hypergradient={"horizon": 4, "memory": 1.0}), task)
    kept.fit(progress=False)
    assert kept.tangents.steps == kept.progress.global_step
    truncated = make_trainer(_config(hypergradient={"horizon": 4, "memory": 0.0}), task)
    truncated.fit(progress=False)
    assert truncated.tangents.steps == truncated.progress.global_step % 4
    assert len(kept.trace) == len(truncated.trace)
