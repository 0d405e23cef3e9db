"""Smoke tests: the benchmark scripts keep running as the library changes (a few seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_hypergrad_step_variants_run() -> None:
    hypergrad_bench = pytest.importorskip("hypergrad")
    bench = hypergrad_bench.StepBench()
    for name, fn in hypergrad_bench.step_variants(bench).items():
        fn()  # every timed variant runs end to end
        assert name


def test_hypergrad_accuracy_table_is_right() -> None:
    hypergrad_bench = pytest.importorskip("hypergrad")
    rows = {(r["method"], r["setting"]): r for r in hypergrad_bench.accuracy_rows(quick=True)}
    assert rows[("implicit", "CG at theta*")]["rel_error"] < 1e-6
    assert rows[("unrolled", "K=300 from 0")]["rel_error"] < 1e-6


def test_noisy_label_grid_configs_are_valid() -> None:
    bench = pytest.importorskip("noisy_labels")
    for dataset in bench.DATASETS:
        for corruption in bench.CORRUPTIONS:
            for method in bench.METHODS:
                cfg = bench.run_config(dataset, corruption, method, seed=1, epochs=2)
                assert cfg.seed == 1 and cfg.optim.epochs == 2
    rows = [
        {
            "dataset": "d",
            "noise": "n",
            "method": "m",
            "seed": s,
            "test_accuracy": a,
            "test_accuracy_at_best_val": a,
            "weight_auc": None,
            "meta_step_time_ratio": None,
        }
        for s, a in enumerate([0.8, 0.9])
    ]
    (summary,) = bench.summarize(rows)
    assert summary["test_accuracy"] == pytest.approx(0.85)
    assert summary["test_accuracy_std"] == pytest.approx(0.0707, abs=1e-3)
    assert "85.00 ± 7.07" in bench.markdown([summary])
