"""``slem predict`` and :func:`slem.train.load_trained`: a run's saved preprocessing and
weights reproduce its own test metrics on new rows, labels keep their names, custom model
classes train from a config, and every bad input is one line."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from slem.data import Preprocessing, load_dataset
from slem.data.preprocess import PREPROCESSING_FILE
from slem.train import load_trained

LABELS = np.array(["cat", "dog", "eel"])


def _table(n: int, seed: int, regression: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, 3.0]
    color = rng.choice(["red", "green", "blue"], size=n)
    score = x[:, 0] + 0.1 * (x[:, 1] - 50) + (color == "red")
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "color": color})
    if regression:
        frame["price"] = 3.0 * score + rng.normal(size=n) * 0.3 + 100.0
    else:
        frame["label"] = LABELS[np.digitize(score, [-0.5, 0.8])]
    return frame


def _files(tmp_path: Path, regression: bool = False) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.csv" for name in ("train", "test", "new")}
    _table(500, 0, regression).to_csv(paths["train"], index=False)
    _table(150, 1, regression).to_csv(paths["test"], index=False)
    target = "price" if regression else "label"
    _table(40, 2, regression).drop(columns=target).to_csv(paths["new"], index=False)
    return paths


def _config(tmp_path: Path, paths: dict[str, Path], target: str, **model: object) -> Path:
    config = {
        "method": "mwnet" if target == "label" else "huber",
        "data": {
            "name": str(paths["train"]),
            "target": target,
            "test": str(paths["test"]),
            **({"meta_per_class": 8} if target == "label" else {}),
        },
        "model": model or {"arch": "mlp", "width": 16},
        "optim": {"epochs": 4, "batch_size": 64},
        "threads": 1,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(runner: CliRunner, config: Path, out: Path) -> dict[str, object]:
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "summary.json").read_text())


def test_predict_reproduces_the_runs_test_accuracy_with_string_labels(
    runner: CliRunner, tmp_path: Path
) -> None:
    paths = _files(tmp_path)
    run = tmp_path / "run"
    summary = _train(runner, _config(tmp_path, paths, "label"), run)
    weights = summary["weights"]
    assert isinstance(weights, dict)
    assert weights["final"] == {"file": "model.safetensors", "epoch": 4}
    assert weights["best"]["file"] == "model_best.safetensors"
    assert weights["best"]["epoch"] == summary["best_epoch"]
    assert weights["chosen"] == "best"
    # the user's own labels: which are wrong is unknown, so no clean/noisy statistics
    assert summary["weight_auc"] is None
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("weight_mean_clean" in r or "weight_auc" in r for r in rows)
    assert (run / "model_best.safetensors").is_file() and (run / PREPROCESSING_FILE).is_file()

    for choice, key in (("chosen", "test_accuracy_at_best_val"), ("final", "test_accuracy")):
        out = tmp_path / f"pred-{choice}.csv"
        args = ["predict", str(run), "--data", str(paths["test"]), "--out", str(out)]
        result = runner.invoke(app, [*args, "--weights", choice])
        assert result.exit_code == 0, result.stderr
        frame = pd.read_csv(out)
        assert list(frame.columns) == ["prediction", "proba_cat", "proba_dog", "proba_eel"]
        assert set(frame["prediction"]) <= set(LABELS)
        np.testing.assert_allclose(frame.filter(like="proba_").sum(axis=1), 1.0, rtol=1e-5)
        truth = pd.read_csv(paths["test"])["label"]
        # the same preprocessing and weights: exactly the accuracy the run reported
        assert np.mean(frame["prediction"] == truth) == pytest.approx(summary[key], abs=1e-9)
        assert f"accuracy {summary[key]:.4f}" in result.stdout

    # rows without the target column: predictions to stdout, in input order
    result = runner.invoke(app, ["predict", str(run), "--data", str(paths["new"])])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("prediction,proba_cat") and len(lines) == 41

    # the Python API gives the same
    trained = load_trained(run)
    assert trained.weights == "best" and trained.epoch == weights["best"]["epoch"]
    prediction = trained.predict_file(paths["test"])
    assert prediction.score is not None
    assert prediction.score["accuracy"] == pytest.approx(summary["test_accuracy_at_best_val"])


def test_predict_regression_in_original_units(runner: CliRunner, tmp_path: Path) -> None:
    paths = _files(tmp_path, regression=True)
    run = tmp_path / "run"
    summary = _train(runner, _config(tmp_path, paths, "price"), run)
    out = tmp_path / "pred.csv"
    result = runner.invoke(
        app, ["predict", str(run), "--data", str(paths["test"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    predicted = pd.read_csv(out)["prediction"].to_numpy()
    truth = pd.read_csv(paths["test"])["price"].to_numpy()
    assert np.mean(np.abs(predicted - truth)) == pytest.approx(
        summary["test_mae_at_best_val"], rel=1e-5
    )
    assert predicted.mean() == pytest.approx(truth.mean(), rel=0.1)  # original units, not z


def test_preprocessing_is_inspectable_json_that_round_trips(
    runner: CliRunner, tmp_path: Path
) -> None:
    paths = _files(tmp_path)
    run = tmp_path / "run"
    _train(runner, _config(tmp_path, paths, "label"), run)
    doc = json.loads((run / PREPROCESSING_FILE).read_text())
    assert doc["class_names"] == ["cat", "dog", "eel"]
    assert doc["table"]["target"] == "label"
    codes = {c["name"]: c for c in doc["table"]["codes"]}
    assert codes["color"]["kind"] == "onehot"
    assert codes["color"]["levels"] == ["blue", "green", "red"]
    assert len(doc["normalizer"]["mean"]) == 6  # a, b, c and three one-hot columns
    loaded = Preprocessing.load(run / PREPROCESSING_FILE)
    assert Preprocessing.from_json(loaded.to_json()).to_json() == loaded.to_json()
    # standardized with the training split's statistics: column b (mean 50, sd 10) ~ N(0, 1)
    X, y, _ = loaded.read(paths["new"])
    assert y is None and X.shape == (40, 6) and abs(X[:, 1].mean()) < 0.5


def test_predict_with_missing_values_uses_training_medians(
    runner: CliRunner, tmp_path: Path
) -> None:
    paths = _files(tmp_path)
    run = tmp_path / "run"
    _train(runner, _config(tmp_path, paths, "label"), run)
    frame = pd.read_csv(paths["new"])
    frame.loc[3, "a"] = np.nan
    frame.loc[[4, 5], "color"] = np.nan  # one category: its three one-hot inputs
    holey = tmp_path / "holey.csv"
    frame.to_csv(holey, index=False)
    result = runner.invoke(app, ["predict", str(run), "--data", str(holey)])
    assert result.exit_code == 0, result.stderr
    assert "missing feature values (a: 1, color: 2) will be filled with training-split" in (
        result.stderr
    )
    frame.loc[3, "a"] = np.inf
    frame.to_csv(holey, index=False)
    result = runner.invoke(app, ["predict", str(run), "--data", str(holey)])
    assert result.exit_code == 2 and "--impute" not in result.stderr
    assert "or empty the cells (they are filled with training-split medians)" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="a"), "columns differ from train.csv (missing a)"),
        (lambda f: f.assign(extra=1), "unexpected extra"),
        (lambda f: f.assign(a="x"), "column 'a' holds text"),
        (lambda f: f.assign(label="wolf"), "labels that are not classes of train.csv: wolf"),
    ],
    ids=["missing", "extra", "mistyped", "unknown-label"],
)
def test_predict_refuses_rows_that_do_not_fit_in_one_line(
    runner: CliRunner, tmp_path: Path, change: object, message: str
) -> None:
    paths = _files(tmp_path)
    run = tmp_path / "run"
    if not run.exists():
        _train(runner, _config(tmp_path, paths, "label"), run)
    bad = tmp_path / "bad.csv"
    change(pd.read_csv(paths["new"])).to_csv(bad, index=False)  # type: ignore[operator]
    result = runner.invoke(app, ["predict", str(run), "--data", str(bad)])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_predict_refuses_what_is_not_a_finished_run(runner: CliRunner, tmp_path: Path) -> None:
    def error(*args: str) -> str:
        result = runner.invoke(app, ["predict", *args])
        assert result.exit_code == 2, result.stdout
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        return result.stderr

    new = tmp_path / "new.csv"
    _table(5, 0).to_csv(new, index=False)
    assert "does not exist" in error(str(tmp_path / "nope"), "--data", str(new))
    assert "is a file; give the run directory" in error(str(new), "--data", str(new))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("method: erm\n")
    assert "unfinished run" in error(str(tmp_path / "half"), "--data", str(new))
    assert "not a slem run directory" in error(str(tmp_path), "--data", str(new))
    (tmp_path / "half" / "methodology.json").write_text("{}")
    (tmp_path / "half" / "config.yaml").unlink()
    assert "is a methodology artifact" in error(str(tmp_path / "half"), "--data", str(new))
    assert "--weights 'x' is unknown" in error(str(tmp_path), "--data", str(new), "--weights", "x")


def test_predict_never_overwrites_its_run_or_its_input(runner: CliRunner, tmp_path: Path) -> None:
    paths = _files(tmp_path)
    run = tmp_path / "run"
    _train(runner, _config(tmp_path, paths, "label"), run)
    summary = (run / "summary.json").read_text()
    for out, message in (
        (run / "summary.json", "is inside the run directory"),
        (run / "plots" / "p.csv", "is inside the run directory"),
        (paths["new"], "is the --data file"),
    ):
        result = runner.invoke(
            app, ["predict", str(run), "--data", str(paths["new"]), "--out", str(out)]
        )
        assert result.exit_code == 2 and message in result.stderr
    assert (run / "summary.json").read_text() == summary
    assert "prediction" not in pd.read_csv(paths["new"]).columns
    empty = tmp_path / "empty.csv"
    pd.read_csv(paths["new"]).iloc[:0].to_csv(empty, index=False)
    result = runner.invoke(app, ["predict", str(run), "--data", str(empty)])
    assert result.exit_code == 2 and "has no rows" in result.stderr


def test_a_run_on_arrays_predicts_npy_inputs(runner: CliRunner, tmp_path: Path) -> None:
    run, config = tmp_path / "run", tmp_path / "digits.yaml"
    config.write_text(
        "method: erm\ndata: {name: digits-images}\nmodel: {width: 8}\noptim: {epochs: 2}\n"
        "threads: 1\n"
    )
    result = runner.invoke(app, ["train", str(config), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.stderr
    raw = load_dataset("digits-images").X[:30]
    np.save(tmp_path / "x.npy", raw)
    out = tmp_path / "p.csv"
    result = runner.invoke(
        app, ["predict", str(run), "--data", str(tmp_path / "x.npy"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert len(pd.read_csv(out)) == 30
    np.save(tmp_path / "wrong.npy", raw[:, :, :4])
    result = runner.invoke(app, ["predict", str(run), "--data", str(tmp_path / "wrong.npy")])
    assert result.exit_code == 2 and "this model takes (1, 8, 8)" in result.stderr


MODELS = textwrap.dedent(
    """
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self, n_features, n_outputs, hidden=16):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, n_outputs)
            )

        def forward(self, x):
            return self.net(x)

    class SevenOut(nn.Module):
        def __init__(self, n_features):
            super().__init__()
            self.out = nn.Linear(n_features, 7)

        def forward(self, x):
            return self.out(x)

    class Crashes(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(1, 1)

        def forward(self, x):
            raise ValueError("not today")

    class Empty(nn.Module):
        def forward(self, x):
            return x
    """
)


def test_a_custom_model_class_trains_from_yaml_and_predicts_elsewhere(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    module = f"slem_test_models_{os.getpid()}"
    (project / f"{module}.py").write_text(MODELS)
    paths = _files(project)
    config = _config(project, paths, "label", arch=f"{module}:TinyNet", kwargs={"hidden": 5})
    monkeypatch.chdir(project)  # the module is found in the working directory
    summary = _train(runner, config, project / "run")
    model = summary["model"]
    assert isinstance(model, dict)
    assert model["arch"] == f"{module}:TinyNet" and model["import_root"] == str(project)
    assert model["parameters"] == 6 * 5 + 5 + 5 * 3 + 3
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != str(project)])
    __import__("sys").modules.pop(module, None)
    result = runner.invoke(app, ["predict", str(project / "run"), "--data", str(paths["test"])])
    assert result.exit_code == 0, result.stderr
    assert "accuracy" in result.stderr


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"arch": "MOD:Nope"}, "MOD has no 'Nope'; its nn.Module classes: Crashes, Empty"),
        ({"arch": "MOD:Empty"}, "the model (Empty) has no trainable parameters"),
        ({"arch": "no_such_module_xyz:Net"}, "cannot import no_such_module_xyz"),
        (
            {"arch": "MOD:TinyNet", "kwargs": {"depth": 3}},
            "TinyNet(depth=3, n_features=6, n_outputs=3) failed: TypeError",
        ),
        ({"arch": "MOD:SevenOut"}, "model output has shape (2, 7); expected (batch, 3) logits"),
        ({"arch": "MOD:Crashes"}, "the model failed on a batch of inputs of shape (2, 6)"),
        ({"arch": "not an arch"}, "unknown arch 'not an arch'"),
        ({"arch": "mlp", "kwargs": {"a": 1}}, "kwargs are for a custom arch"),
    ],
    ids=["no-class", "no-params", "no-module", "kwargs", "output", "forward", "syntax", "kw"],
)
def test_custom_model_errors_are_one_line(
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: dict[str, object],
    message: str,
) -> None:
    module = f"slem_test_models_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    paths = _files(tmp_path)
    model = {k: v.replace("MOD", module) if isinstance(v, str) else v for k, v in model.items()}
    config = _config(tmp_path, paths, "label", **model)
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2, result.stdout
    assert message.replace("MOD", module) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing left behind


def test_a_config_finds_its_files_and_model_module_next_to_it(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    project = tmp_path / "project"
    project.mkdir()
    module = f"slem_test_nextto_{os.getpid()}"
    (project / f"{module}.py").write_text(MODELS)
    _table(300, 0).to_csv(project / "my.csv", index=False)
    _table(100, 1).to_csv(project / "test.csv", index=False)
    config = {
        "method": "erm",
        "data": {"name": "my.csv", "target": "label", "test": "test.csv"},  # next to it
        "model": {"arch": f"{module}:TinyNet"},
        "optim": {"epochs": 2},
        "threads": 1,
    }
    (project / "my.yaml").write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored afterwards
    summary = _train(runner, project / "my.yaml", elsewhere / "run")
    assert summary["test_accuracy"] is not None
    written = yaml.safe_load((elsewhere / "run" / "config.yaml").read_text())
    assert written["data"]["name"] == str(project / "my.csv")  # the file it read, absolute
    assert written["data"]["test"] == str(project / "test.csv")
    # a path found nowhere is one line saying where it was looked for
    config["data"]["name"] = "missing.csv"
    (project / "bad.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", str(project / "bad.yaml"), "--out", "r2", "--quiet"])
    assert result.exit_code == 2
    assert f"data file 'missing.csv' does not exist (looked for {elsewhere / 'missing.csv'})" in (
        result.stderr
    )
