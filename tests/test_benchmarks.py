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
