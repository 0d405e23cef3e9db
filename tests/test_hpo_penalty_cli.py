"""``slem hpo`` with ``objective.kind: penalty`` (per-feature L2 penalties by implicit
hypergradients): the files a user acts on, and the one-line refusals. A 300-row table."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from tests.test_cli_robustness import one_line_error


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two informative columns, four noise columns; a class label (``table.csv``) and the
    real-valued score behind it (``values.csv``)."""
    root = tmp_path_factory.mktemp("penalty_cli")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    score = x[:, 0] - x[:, 1] + 0.5 * rng.normal(size=300)
    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(6)])
    frame.assign(value=score).to_csv(root / "values.csv", index=False)
    frame["label"] = np.where(score > 0, "yes", "no")
    path = root / "table.csv"
    frame.to_csv(path, index=False)
    return path


def _config(tmp_path: Path, table: Path, **objective: Any) -> Path:
    doc = {
        "study": {"name": "l2", "strategy": "hypergradient", "hypergradient": {"outer_steps": 4}},
        "objective": {
            "kind": "penalty",
            "data": {"name": str(table), "target": "label", "val_fraction": 0.3},
            **objective,
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_per_feature_penalties_end_to_end(runner: CliRunner, tmp_path: Path, table: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["hpo", str(_config(tmp_path, table)), "--out", str(out)])
    assert result.exit_code == 0, result.stdout + result.stderr
    best = json.loads((out / "best.json").read_text())
    assert best["n_penalties"] == 6 and best["val_loss"] <= best["initial_val_loss"]
    assert 0.5 < best["test_accuracy"] <= 1.0 and best["test_log_loss"] > 0
    penalties = pd.read_csv(out / "penalties.csv")
    assert list(penalties["feature"]) == [f"f{j}" for j in range(6)]
    model = json.loads((out / "model.json").read_text())
    assert np.asarray(model["coef"]).shape[0] == 6 and model["classes"] == ["no", "yes"]
    trajectory = pd.read_csv(out / "trajectory.csv")
    assert len(trajectory) == best["outer_steps"] and "penalty_5" in trajectory
    assert (out / "plots" / "penalties.png").is_file()
    assert "already holds a study" in one_line_error(
        runner.invoke(app, ["hpo", str(_config(tmp_path, table)), "--out", str(out)])
    )


def test_ridge_and_one_global_penalty(runner: CliRunner, tmp_path: Path, table: Path) -> None:
    config = _config(tmp_path, table, model="ridge", groups="global")
    doc = yaml.safe_load(config.read_text())
    doc["objective"]["data"].update(name=str(table.parent / "values.csv"), target="value")
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    result = runner.invoke(app, ["hpo", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.stdout + result.stderr
    best = json.loads((out / "best.json").read_text())
    assert best["n_penalties"] == 1 and best["metric"] == "val_mse" and best["test_mse"] > 0
    assert pd.read_csv(out / "penalties.csv")["penalty"].nunique() == 1


@pytest.mark.parametrize(
    ("objective", "sets", "message"),
    [
        ({"model": "ridge"}, [], "has class labels: set objective.model logistic"),
        ({}, ["--set", "study.strategy=blackbox"], "kind cash with families [logreg]"),
        ({"penalty_range": [1.0, 0.1]}, [], "penalty_range must be 0 < low < high"),
    ],
)
def test_refusals(
    runner: CliRunner,
    tmp_path: Path,
    table: Path,
    objective: dict[str, Any],
    sets: list[str],
    message: str,
) -> None:
    config = _config(tmp_path, table, **objective)
    line = one_line_error(
        runner.invoke(app, ["hpo", str(config), "--out", str(tmp_path / "r"), *sets])
    )
    assert message in line
    assert not (tmp_path / "r").exists()  # nothing written: the corrected config may rerun


def test_slem_predict_reads_a_penalty_run(runner: CliRunner, tmp_path: Path, table: Path) -> None:
    """The run directory holds the model as a scikit-learn estimator and the preprocessing:
    slem predict gives the search's own predictions on new rows."""
    from slem.automl.outputs import load_model

    out = tmp_path / "run"
    assert (
        runner.invoke(app, ["hpo", str(_config(tmp_path, table)), "--out", str(out)]).exit_code == 0
    )
    rows = tmp_path / "new.csv"
    pd.read_csv(table).head(20).to_csv(rows, index=False)
    result = runner.invoke(app, ["predict", str(out), "--data", str(rows)])
    assert result.exit_code == 0, result.stdout + result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert set(frame.iloc[:, 0].astype(str)) <= {"yes", "no"} and len(frame) == 20
    model = json.loads((out / "model.json").read_text())
    trained = load_model(out)
    x = trained.preprocessing.read(rows)[0].reshape(20, -1)
    logits = x @ np.asarray(model["coef"]) + model["intercept"]
    expected = np.asarray(model["classes"])[(logits[:, 0] > 0).astype(int)]
    assert list(frame.iloc[:, 0].astype(str)) == list(expected)


@pytest.mark.parametrize("kind", ["binary", "softmax", "ridge"])
def test_to_sklearn_predicts_as_the_result(kind: str) -> None:
    from slem.automl.penalties import tune_penalties

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    score = x[:, 0] - 0.5 * x[:, 1]
    y: Any = (
        score if kind == "ridge" else np.digitize(score, [0.0] if kind == "binary" else [-0.5, 0.5])
    )
    result = tune_penalties(
        x[:80],
        y[:80],
        x[80:],
        y[80:],
        model="ridge" if kind == "ridge" else "logistic",
        outer_steps=2,
    )
    estimator = result.to_sklearn()
    if kind == "ridge":
        np.testing.assert_allclose(estimator.predict(x), result.predict(x), rtol=1e-10)
    else:
        np.testing.assert_allclose(estimator.predict_proba(x), result.predict_proba(x), atol=1e-10)
        assert list(estimator.predict(x)) == list(result.predict(x))


def test_built_in_tables_keep_their_feature_names(runner: CliRunner, tmp_path: Path) -> None:
    doc = {
        "study": {"strategy": "hypergradient", "hypergradient": {"outer_steps": 2}},
        "objective": {"kind": "penalty", "data": {"name": "breast_cancer"}},
    }
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["hpo", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.stdout + result.stderr
    names = pd.read_csv(tmp_path / "run" / "penalties.csv")["feature"]
    assert names.iloc[0] == "mean radius" and len(names) == 30
