"""``slem apply --compare``: baselines on the same task split with the same settings, one
table, resumable; and the line saying which settings the applied run inherited."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from slem.cli.app import app
from slem.cli.compare import baseline_names, inherited_settings
from slem.train.meta_test import apply_config

APPLY = ["apply", "zoo:lr-schedule", "--data", "digits", "--epochs", "1", "--quiet"]


def test_compare_trains_the_baselines_on_the_same_split_and_resumes(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*APPLY, "--out", str(out), "--compare", "erm,gce"])
    assert result.exit_code == 0, result.stderr
    stdout = result.stdout
    # the inherited settings: what was built, from where, how to override
    assert "model: mlp width 64 depth 2, 8,970 parameters (auto: mlp for 64 features; " in stdout
    assert "width and depth from the artifact's training config" in stdout
    assert "optim: sgd, lr 0.05, momentum 0.9" in stdout and "except epochs" in stdout
    doc = json.loads((out / "compare.json").read_text())
    assert doc["baselines"] == ["erm", "gce"] and doc["metric"] == "test_accuracy"
    assert [r["method"] for r in doc["rows"]] == ["apply", "erm", "gce"]
    applied = yaml.safe_load((out / "config.yaml").read_text())
    for name in ("erm", "gce"):
        run = out / "compare" / name
        summary = json.loads((run / "summary.json").read_text())
        row = doc["rows"][["apply", "erm", "gce"].index(name)]
        assert row["test_accuracy"] == summary["test_accuracy"]
        assert row["test_accuracy_at_best_val"] == summary["test_accuracy_at_best_val"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["method"] == name
        for key in ("data", "model", "optim", "seed"):  # the same split and settings
            assert config[key] == applied[key], key
    for header in ("method", "test acc (final)", "train s"):
        assert header in stdout

    # an interrupted comparison: gce not finished, nothing of erm's is trained again
    erm_summary = out / "compare/erm/summary.json"
    before = erm_summary.stat().st_mtime_ns
    (out / "compare/gce/summary.json").unlink()
    result = runner.invoke(app, ["apply", "--resume", str(out), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert erm_summary.stat().st_mtime_ns == before
    assert (out / "compare/gce/summary.json").is_file()
    again = json.loads((out / "compare.json").read_text())
    assert [r["test_accuracy"] for r in again["rows"]] == [r["test_accuracy"] for r in doc["rows"]]


def test_compare_refuses_what_cannot_be_a_baseline(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out"
    valid = ", ".join(baseline_names("classification"))
    assert valid.startswith("erm, gce") and "mwnet" not in valid and "mse" not in valid
    for given, why in (
        ("erm,mwnet", "it meta-learns"),
        ("mse", "it is for regression targets"),
        ("finetune", "needs a clean meta set"),
        ("nope", "no such method"),
    ):
        result = runner.invoke(app, [*APPLY, "--out", str(out), "--compare", given])
        assert result.exit_code == 2, given
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and lines[0].endswith(f"use {valid}"), lines
    result = runner.invoke(app, [*APPLY, "--out", str(out), "--compare", "erm", "--nproc", "2"])
    assert result.exit_code == 2 and "drop --nproc" in result.stderr
    assert not out.exists()  # nothing written


def test_inherited_settings_say_what_was_built() -> None:
    trained = {
        "model": {"arch": "mlp", "width": 128, "depth": 2},
        "optim": {
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "batch_size": 128,
            "epochs": 30,
        },
    }
    config = apply_config("zoo:lr-schedule", "fashion-mnist", overrides=["model.width=128"])
    model, optim = inherited_settings(config, trained, (1, 28, 28), 891_274)
    assert model.startswith("model: cnn2d width 128, 891,274 parameters (auto: cnn2d for ")
    assert "meta-trained with arch mlp" in model
    assert "--set model.width=16 or --set model.arch=mlp" in model
    assert "from the artifact's training config except" in optim
    # an override wins, and is not said to come from the artifact
    config = apply_config("zoo:lr-schedule", "fashion-mnist", overrides=["model.width=16"])
    assert config.model.width == 16
    model, _ = inherited_settings(config, trained, (1, 28, 28), 30_000)
    assert "model: cnn2d width 16" in model and "training config" not in model
    config = apply_config(
        "zoo:lr-schedule", "fashion-mnist", overrides=["model.arch=mlp", "model.width=16"]
    )
    assert config.model.arch == "mlp"
    model, _ = inherited_settings(config, trained, (1, 28, 28), 12_000)
    assert model.startswith("model: mlp width 16 depth 2, 12,000 parameters (depth from the")
