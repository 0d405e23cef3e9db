"""Report on top: a run returns a plain :class:`RunRecord`, ``slem.report`` renders records
(no trainer needed), and the layer order of DESIGN.md holds (``lint-imports``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slem.report import write_run_plots
from slem.train.config import parse_train_config
from slem.train.record import RunRecord
from slem.train.run import train_run

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY = {
    "method": "mwnet",
    "data": {"name": "iris", "noise": "symmetric:0.4", "meta_per_class": 5},
    "model": {"width": 8},
    "optim": {"epochs": 2, "batch_size": 32},
    "meta": {"warmup_epochs": 0},
    "threads": 1,
}


def full_record() -> RunRecord:
    """A record with every named array, built by hand: no trainer, no torch."""
    rng = np.random.default_rng(0)
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5 + e / 10}
        for e in (1, 2, 3)
    ]
    residual = np.linspace(-6, 6, 241)
    arrays = {
        "train_weights": rng.uniform(size=50),
        "noisy_mask": np.arange(50) % 3 == 0,
        "weight_curve_loss": np.linspace(0, 3, 200),
        "weight_curve": rng.uniform(size=(2, 200)),
        "lr_trace": np.linspace(0.1, 0.01, 30),
        "lr_stages": np.array([[0, 0], [15, 1]]),
        "lr_reference": np.linspace(0.1, 0.0, 30),
        "adjuster_margin": np.linspace(-10, 10, 201),
        "adjuster_curve": rng.uniform(size=(2, 201, 1)),
        "transition_true": np.eye(3),
        "transition_estimated": np.full((3, 3), 1 / 3),
        "hwnet_residual": residual,
        "hwnet_curve": rng.dirichlet(np.ones(2), size=241),
        "hwnet_loss": 0.5 * residual**2,
        "hwnet_l2": 0.5 * residual**2,
        "test_prediction": rng.normal(size=20),
        "test_target": rng.normal(size=20),
        "meta_loss": rng.uniform(size=40),
    }
    info = {
        "weighting_kind": "mwnet",
        "lr0": 0.1,
        "adjuster_names": ["q"],
        "adjuster_family": "gce",
        "transition_label": "estimated",
        "hwnet_mode": "mix",
        "hwnet_losses": ["l2", "l1"],
        "title": "hand-made",
    }
    return RunRecord(history, {"method": "hand-made"}, arrays, info)


def test_every_plot_renders_from_plain_data(tmp_path: Path) -> None:
    paths = write_run_plots(full_record(), tmp_path)
    assert [p.name for p in paths] == [
        "meta_training.png",
        "learning_curves.png",
        "learned_loss.png",
        "predicted_vs_true.png",
        "adjuster_vs_margin.png",
        "transition.png",
        "lr_schedule.png",
        "weight_vs_loss.png",
        "weight_histograms.png",
    ]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)
    for p in paths:
        assert p.parent == tmp_path / "plots" and p.read_bytes()[:8] == PNG, p


def test_a_record_gets_only_the_plots_it_has_data_for(tmp_path: Path) -> None:
    meta = RunRecord(
        [{"iteration": i, "meta_loss": 1.0 / i} for i in (1, 2, 3)],
        {},
        {"meta_loss": np.array([1.0, 0.5, 1 / 3])},
    )
    assert [p.name for p in write_run_plots(meta, tmp_path / "meta")] == ["meta_training.png"]
    plain = RunRecord([{"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9}], {})
    assert [p.name for p in write_run_plots(plain, tmp_path / "erm")] == ["learning_curves.png"]


def test_train_run_returns_the_record_and_plots_only_through_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    record, run_dir = train_run(parse_train_config(TINY), run, progress=False)
    assert run_dir == run and not (run / "plots").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary == record.summary and summary["plots"] == []
    assert [r["epoch"] for r in record.history] == [1, 2]

    a = record.arrays
    n = summary["n_train"]
    assert a["train_weights"].shape == (n,) and a["noisy_mask"].shape == (n,)
    assert a["noisy_mask"].dtype == bool
    assert a["noisy_mask"].mean() == pytest.approx(summary["noise_rate_realized"])
    assert a["weight_curve_loss"].shape == (200,) and a["weight_curve_loss"][0] == 0.0
    assert a["weight_curve"].shape == (1, 200)  # iris is balanced: one class group
    assert ((a["weight_curve"] >= 0) & (a["weight_curve"] <= 1)).all()
    assert record.info["weighting_kind"] == "mwnet"
    assert "lr_trace" not in a and "meta_loss" not in a  # no learned schedule here

    paths = write_run_plots(record, run)
    assert [p.name for p in paths] == [
        "learning_curves.png",
        "weight_vs_loss.png",
        "weight_histograms.png",
    ]


def test_the_cli_lists_its_plots_in_the_summary(tmp_path: Path) -> None:
    from slem.cli.train_cmd import run_and_report

    run = tmp_path / "run"
    record = run_and_report(parse_train_config(TINY), run, False, True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary == record.summary
    assert sorted(Path(p).name for p in summary["plots"]) == sorted(
        p.name for p in (run / "plots").iterdir()
    )
    assert len(summary["plots"]) == 3


def test_layers_contract_holds() -> None:
    """``lint-imports`` (in scripts/test.sh): imports point down the layers of DESIGN.md;
    nothing below ``slem.report`` imports it."""
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
        lint = Path(found)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "0 broken" in out.stdout


def test_bbo_run_returns_its_meta_training_record(tmp_path: Path) -> None:
    from slem.train.bbo import bbo_run
    from slem.train.config import parse_bbo_config

    cfg = parse_bbo_config({"dim": 2, "iterations": 4, "steps": 5, "batch_size": 4})
    record = bbo_run(cfg, tmp_path, progress=False, render=write_run_plots)
    assert [r["iteration"] for r in record.history] == [1, 2, 3, 4]
    np.testing.assert_array_equal(
        record.arrays["meta_loss"], [r["meta_loss"] for r in record.history]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == record.summary and summary["iterations"] == 4
    assert summary["plots"] == [str(tmp_path / "plots" / "meta_training.png")]
