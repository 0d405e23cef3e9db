"""What slem hpo leaves a user to act on: best.yaml that slem train runs, --refit, the source of
every trial, --set reaching the base training config, objective.base relative to the study
config. Tiny studies (2-3 trials, 2 epochs, a 240-row table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from slem.automl.cash import load_pipeline
from slem.cli.app import app
from slem.errors import SlemError

SPACE = {
    "optim.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "model.width": [4, 8],
}


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plots (tested in test_report, test_automl) take seconds: none here."""
    import slem.report

    monkeypatch.setattr(slem.report, "write_study_plots", lambda study, out, **_: [])
    monkeypatch.setattr(slem.report, "write_run_plots", lambda record, out: [])


def one_line(result: Any) -> str:
    """The error line of a refused command (exit 2, no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``proj/data/table.csv`` (the working directory of the study) and, elsewhere,
    ``configs/``: the study config and its base training config, whose data path is relative
    to the working directory (as slem train reads it)."""
    root = tmp_path_factory.mktemp("hpo_outputs")
    rng = np.random.default_rng(0)
    n = 240
    x = rng.normal(size=(n, 3))
    color = rng.choice(["red", "green"], size=n)
    score = x[:, 0] + (color == "red") * 1.0
    label = np.where(score > 0.7, "high", np.where(score < -0.3, "low", "mid"))
    (root / "proj" / "data").mkdir(parents=True)
    pd.DataFrame(
        {"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "color": color, "label": label}
    ).to_csv(root / "proj" / "data" / "table.csv", index=False)
    configs = root / "configs"
    configs.mkdir()
    base = {
        "method": "erm",
        "data": {"name": "data/table.csv", "target": "label"},
        "model": {"arch": "mlp", "width": 8},
        "optim": {"epochs": 3, "batch_size": 32},
    }
    (configs / "base.yaml").write_text(yaml.safe_dump(base))
    study = {
        "study": {"name": "tiny", "sampler": "random", "trials": 2, "seed": 0},
        "objective": {"kind": "train", "base": "base.yaml", "space": SPACE},
    }
    (configs / "hpo.yaml").write_text(yaml.safe_dump(study))
    return root


@pytest.fixture(scope="module")
def train_study(project: Path) -> tuple[Path, Any]:
    """The train study run from ``proj/`` with --refit and --set on the base (3 -> 2
    epochs); returns its run directory and the CLI result."""
    import slem.report

    out = project / "study"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slem.report, "write_study_plots", lambda study, out, **_: [])
        mp.setattr(slem.report, "write_run_plots", lambda record, out: [])
        mp.chdir(project / "proj")
        result = CliRunner().invoke(
            app,
            [
                "hpo",
                str(project / "configs" / "hpo.yaml"),
                "--out",
                str(out),
                "--quiet",
                "--refit",
                "--set",
                "optim.epochs=2",
                "--set",
                "objective.base.optim.batch_size=16",
            ],
        )
    assert result.exit_code == 0, result.stderr
    return out, result


def load_study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/study.db")


def last_row(run: Path) -> dict[str, Any]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return dict(json.loads(lines[-1]))


def test_set_reaches_the_base_and_objective_base_is_relative_to_the_config(
    train_study: tuple[Path, Any], project: Path
) -> None:
    out, _ = train_study
    stored = yaml.safe_load((out / "hpo.yaml").read_text())
    base = stored["objective"]["base"]  # read in: the study runs the base it started with
    assert base["method"] == "erm"  # configs/base.yaml, though the study ran from proj/
    assert base["optim"] == {"epochs": 2, "batch_size": 16}  # both --set forms
    assert base["data"]["name"] == str(project / "proj" / "data" / "table.csv")
    for trial in load_study(out, "tiny").trials:
        assert sorted(trial.intermediate_values) == [1, 2]  # the trials ran 2 epochs


def test_best_yaml_runs_with_slem_train_from_another_directory(
    train_study: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, result = train_study
    best = json.loads((out / "best.json").read_text())
    assert best["best_config"] == str(out / "best.yaml")
    assert f"best config: {out / 'best.yaml'}; run it with 'slem train" in result.stdout
    text = (out / "best.yaml").read_text()
    assert text.startswith("# slem hpo, study 'tiny': the best configuration, trial ")
    monkeypatch.chdir(tmp_path)  # no data/table.csv here: the path in best.yaml is absolute
    ran = CliRunner().invoke(app, ["train", str(out / "best.yaml"), "--out", "runs/x", "--quiet"])
    assert ran.exit_code == 0, ran.stderr
    run = tmp_path / "runs" / "x"
    config = yaml.safe_load((run / "config.yaml").read_text())
    params = best["best_params"]
    assert config["optim"]["lr"] == params["optim.lr"]
    assert config["model"]["width"] == params["model.width"]
    assert config["optim"]["epochs"] == 2 and config["optim"]["batch_size"] == 16
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2
    # the same config and seed: the validation score the study chose it by
    assert last_row(run)["val_accuracy"] == pytest.approx(best["best_value"], abs=1e-9)


def test_refit_writes_a_run_directory(train_study: tuple[Path, Any]) -> None:
    out, result = train_study
    refit = out / "refit"
    for name in ("config.yaml", "summary.json", "model.safetensors", "metrics.jsonl"):
        assert (refit / name).is_file(), name
    best = json.loads((out / "best.json").read_text())
    config = yaml.safe_load((refit / "config.yaml").read_text())
    config.pop("provenance")
    body = yaml.safe_load((out / "best.yaml").read_text())
    assert config == body  # the refit is best.yaml, trained
    assert last_row(refit)["val_accuracy"] == pytest.approx(best["best_value"], abs=1e-9)
    line = next(x for x in result.stdout.splitlines() if x.startswith("refit: "))
    assert str(refit / "model.safetensors") in line and "test_accuracy" in line
    assert "val_accuracy" in line
    # slem predict takes the study's directory and uses the refitted model
    table = out.parent / "proj" / "data" / "table.csv"
    predicted = out.parent / "predicted.csv"
    run = CliRunner().invoke(
        app, ["predict", str(out), "--data", str(table), "--out", str(predicted)]
    )
    assert run.exit_code == 0, run.stderr
    assert f"of {refit}" in run.stdout
    labels = pd.read_csv(table)["label"].astype(str)
    assert set(pd.read_csv(predicted)["prediction"].astype(str)) <= set(labels)


def test_resume_without_config_from_another_directory(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    out = tmp_path / "study"
    config = str(project / "configs" / "hpo.yaml")
    monkeypatch.chdir(project / "proj")
    small = ["--out", str(out), "--quiet", "--set", "optim.epochs=1"]
    assert runner.invoke(app, ["hpo", config, "--trials", "1", *small]).exit_code == 0
    again = runner.invoke(app, ["hpo", config, "--trials", "2", "--resume", *small])
    assert again.exit_code == 0, again.stderr  # the same config: the same study
    changed = runner.invoke(app, ["hpo", config, "--resume", *small[:-1], "optim.epochs=3"])
    assert "objective.base.optim.epochs" in one_line(changed)
    monkeypatch.chdir(tmp_path)  # hpo.yaml holds the base with absolute paths
    more = runner.invoke(app, ["hpo", "--resume", "--out", str(out), "--trials", "3", "--quiet"])
    assert more.exit_code == 0, more.stderr
    assert json.loads((out / "best.json").read_text())["trials"] == 3


def test_bad_set_and_base_inputs_are_one_line(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    config = str(project / "configs" / "hpo.yaml")
    out = ["--out", str(tmp_path / "o")]

    def error(*args: str) -> str:
        return one_line(runner.invoke(app, ["hpo", *args, *out]))

    monkeypatch.chdir(project / "proj")
    assert "search space sets this key" in error(config, "--set", "optim.lr=0.1")
    line = error(config, "--set", "optim.epochz=2")
    assert "optim.epochz" in line and "base training config" in line
    assert "study.trials=20" in error(config, "--set", "trials=3")
    cash = tmp_path / "cash.yaml"
    cash.write_text("objective: {kind: cash, data: {name: iris}}\n")
    assert "no base training config" in error(str(cash), "--set", "optim.epochs=1")
    # objective.base is relative to the study config's directory, not the working directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "hpo.yaml"
    moved.write_text((project / "configs" / "hpo.yaml").read_text())
    line = error(str(moved))
    assert f"objective.base 'base.yaml' does not exist (relative to {elsewhere})" in line
    monkeypatch.chdir(project / "configs")  # base.yaml is here, but not next to the config
    line = error(str(moved))
    assert "relative to the study config's directory" in line
    assert not (tmp_path / "o").exists()
    refit = tmp_path / "r"
    (refit / "refit").mkdir(parents=True)
    (refit / "refit" / "x").write_text("")
    line = one_line(runner.invoke(app, ["hpo", str(cash), "--out", str(refit), "--refit"]))
    assert "already holds a refit" in line and not (refit / "hpo.yaml").exists()


LOGREG = {"family": "logreg", "scaler": "standard", "logreg.C": 1.0, "logreg.class_weight": "none"}
KNN = {"family": "knn", "scaler": "robust", "knn.n_neighbors": 5, "knn.weights": "distance"}
SVM = {
    "family": "svm",
    "scaler": "standard",
    "svm.C": 1.0,
    "svm.kernel": "linear",
    "svm.class_weight": "none",
}


def small_meta_dataset(path: Path, candidates: list[dict[str, Any]]) -> Path:
    """Earlier tasks, on each of which one of ``candidates`` is best (in turn)."""
    from slem.automl.meta import MetaStore

    store = MetaStore()
    for i in range(4):
        good = i % len(candidates)
        scores = [0.9 if j == good else 0.6 for j in range(len(candidates))]
        trials = [{"params": c, "value": v} for c, v in zip(candidates, scores, strict=True)]
        store.add(f"task{i}", {"n_samples": 100.0 + 200 * i, "n_classes": 2.0 + i}, trials)
        store.scores[f"task{i}"] = scores
    store.candidates = candidates
    return store.save(path)


def test_meta_learned_starts_keep_to_the_space_and_name_their_source(tmp_path: Path) -> None:
    from slem.automl import parse_hpo_config
    from slem.automl.run import build_objective, meta_learned_starts

    md = small_meta_dataset(tmp_path / "md.json", [LOGREG, KNN, SVM])
    cfg = parse_hpo_config(
        {
            "study": {"zero_shot": 3, "warm_start": 4, "meta_dataset": str(md)},
            "objective": {"kind": "cash", "data": {"name": "iris"}, "families": ["logreg", "knn"]},
        }
    )
    starts = meta_learned_starts(cfg, build_objective(cfg))
    # svm is not in the study's space: dropped (its trial would fail); each config once
    assert sorted(s.params["family"] for s in starts) == ["knn", "logreg"]
    assert all(s.source.startswith("zero_shot:md.json#") for s in starts)


def test_cash_sources_best_yaml_and_refit_pipeline(project: Path, tmp_path: Path) -> None:
    from sklearn.metrics import balanced_accuracy_score

    from slem.data.config import parse_data_config
    from slem.data.task import build_task

    csv = project / "proj" / "data" / "table.csv"
    config = tmp_path / "cash.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "study": {
                    "name": "cash-tiny",
                    "sampler": "tpe",
                    "trials": 3,
                    "seed": 0,
                    "warm_start": 2,
                    "zero_shot": 1,
                    "meta_dataset": str(small_meta_dataset(tmp_path / "md.json", [LOGREG, KNN])),
                },
                "objective": {
                    "kind": "cash",
                    "data": {"name": str(csv), "target": "label"},
                    "families": ["logreg", "knn"],
                },
            }
        )
    )
    out = tmp_path / "study"
    result = CliRunner().invoke(app, ["hpo", str(config), "--out", str(out), "--refit"])
    assert result.exit_code == 0, result.stderr
    assert "┃ source" in result.stdout  # the table shows where each configuration came from
    sources = [t.user_attrs["source"] for t in load_study(out, "cash-tiny").trials]
    assert sources[0] == "zero_shot:md.json#1"
    assert sources[1].startswith("warm_start:") and sources[2] == "sampler"
    best = json.loads((out / "best.json").read_text())
    assert [s["source"] for s in best["starts"]] == sources[:2]
    assert best["best_source"] == sources[best["best_trial"]] and best["failed"] == 0
    doc = yaml.safe_load((out / "best.yaml").read_text())
    assert doc["params"] == best["best_params"] and doc["source"] == best["best_source"]
    assert doc["steps"][-1]["step"] == "model" and doc["value"] == best["best_value"]
    info = json.loads((out / "refit" / "pipeline.json").read_text())
    assert info["params"] == best["best_params"] and info["fitted_on"] == ["train", "val"]
    assert info["class_names"] == ["high", "low", "mid"]
    assert len(info["feature_names"]) == info["n_features"]
    assert {"x0", "x1", "x2"} <= set(info["feature_names"])
    pipe = load_pipeline(out / "refit" / "pipeline.skops")
    task = build_task(parse_data_config(info["data"]))
    predicted = pipe.predict(task.test.X.reshape(len(task.test), -1))
    assert balanced_accuracy_score(task.test.y, predicted) == pytest.approx(info["test"])
    assert "refit: " + str(out / "refit" / "pipeline.skops") in result.stdout
    # slem predict on the study's directory: the pipeline, on the test split's raw rows
    rows = pd.read_csv(csv).iloc[task.test.index]
    rows.to_csv(tmp_path / "rows.csv", index=False)
    run = CliRunner().invoke(
        app,
        [
            "predict",
            str(out),
            "--data",
            str(tmp_path / "rows.csv"),
            "--out",
            str(tmp_path / "p.csv"),
        ],
    )
    assert run.exit_code == 0, run.stderr
    assert "pipeline of" in run.stdout
    frame = pd.read_csv(tmp_path / "p.csv")
    assert balanced_accuracy_score(rows["label"], frame["prediction"]) == pytest.approx(
        info["test"]
    )
    assert list(frame.columns) == ["prediction", "proba_high", "proba_low", "proba_mid"]
    again = CliRunner().invoke(
        app, ["predict", str(out), "--data", str(tmp_path / "rows.csv"), "--weights", "final"]
    )
    assert again.exit_code == 2 and "has one fit" in again.stderr


class Foreign:
    """A type no skops file written by slem holds."""

    def __init__(self) -> None:
        self.value = 1


def test_load_pipeline_refuses_foreign_types_and_damaged_files(tmp_path: Path) -> None:
    import skops.io

    foreign = tmp_path / "foreign.skops"
    skops.io.dump({"x": Foreign()}, foreign)
    with pytest.raises(SlemError, match="holds types outside sklearn, numpy"):
        load_pipeline(foreign)
    damaged = tmp_path / "damaged.skops"
    damaged.write_text("not a zip")
    with pytest.raises(SlemError, match="is not a skops pipeline file"):
        load_pipeline(damaged)
    with pytest.raises(SlemError, match="no pipeline at"):
        load_pipeline(tmp_path / "missing.skops")
