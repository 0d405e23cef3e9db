"""``slem train`` / ``slem apply`` / ``slem demo``: run directories, transfer, interrupt and
resume through real signals, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from slem.cli.app import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["--set", "data.size=2000", "--set", "optim.epochs=2", "--set", "model.width=16", "--quiet"]


def test_train_writes_a_complete_run_directory_and_apply_transfers(
    runner: CliRunner, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(EXAMPLES / "mwnet_mnist1d.yaml"), "--out", str(run), *SMALL]
    )
    assert result.exit_code == 0, result.stderr
    assert "test accuracy" in result.stdout
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed"] == 0 and config["provenance"]["git_revision"]
    assert config["provenance"]["torch"] and config["data"]["size"] == 2000
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    summary = json.loads((run / "summary.json").read_text())
    for key in ("method", "dataset", "noise", "val_accuracy", "test_accuracy", "epochs", "seconds"):
        assert summary[key] is not None, key
    for name in (
        "checkpoint.pt",
        "model.safetensors",
        "methodology/methodology.json",
        "methodology/methodology.safetensors",
        "plots/weight_vs_loss.png",
        "plots/weight_histograms.png",
        "plots/learning_curves.png",
    ):
        assert (run / name).is_file(), name
    artifact = json.loads((run / "methodology/methodology.json").read_text())
    assert artifact["meta_trained_on"]["dataset"] == "mnist1d"

    applied = tmp_path / "applied"
    result = runner.invoke(
        app,
        [
            "apply",
            str(run / "methodology"),
            "--data",
            "digits-images",
            "--noise",
            "symmetric:0.3",
            "--epochs",
            "2",
            "--out",
            str(applied),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((applied / "summary.json").read_text())
    assert summary["method"] == "apply" and summary["dataset"] == "digits-images"
    assert summary["n_meta"] == 0 and summary["weight_auc"] is not None
    info = json.loads((applied / "methodology/methodology.json").read_text())
    assert info["meta_trained_on"]["dataset"] == "mnist1d"
    assert info["applied_to"]["dataset"] == "digits-images"

    again = runner.invoke(
        app, ["train", str(EXAMPLES / "mwnet_mnist1d.yaml"), "--out", str(run), *SMALL]
    )
    assert again.exit_code == 2 and "already holds a run" in again.stderr


def test_config_errors_are_one_line(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: mwnet\ndata: {name: mnist1d, meta_per_class: 10}\noptim: {lr: 0}\n")
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: optim.lr: Input should be greater than 0 (got 0)"
    ]
    result = runner.invoke(
        app, ["train", str(EXAMPLES / "erm_mnist1d.yaml"), "--set", "optim.epoch=3"]
    )
    assert result.exit_code == 2 and "optim.epoch: Extra inputs are not permitted" in result.stderr
    result = runner.invoke(app, ["apply", str(tmp_path), "--data", "mnist1d"])
    assert result.exit_code == 2 and "not a methodology artifact" in result.stderr


def test_sigint_leaves_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "slem.cli.app",
        "train",
        str(EXAMPLES / "erm_mnist1d.yaml"),
        "--out",
        str(run),
        "--set",
        "data.size=3000",
        "--set",
        "optim.epochs=40",
        "--set",
        "model.width=16",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 120
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stderr and "--resume" in stderr
    assert (run / "checkpoint.pt").is_file()
    done_before = len(metrics.read_text().splitlines())
    assert 1 <= done_before < 40
    resumed = subprocess.run(
        [sys.executable, "-m", "slem.cli.app", "train", "--resume", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 40
    assert len(metrics.read_text().splitlines()) == 40


def test_demo_runs(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--epochs", "2", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert "ERM" in result.stdout and "MW-Net" in result.stdout and "plots:" in result.stdout
