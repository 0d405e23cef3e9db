"""Black-box NAS on the NAS-Bench-201 tables: regularized evolution against random search, TPE,
BOHB and GP (one objective), and against NSGA-II, MOTPE and random (accuracy vs latency and
accuracy vs model size).

    OMP_NUM_THREADS=1 python benchmarks/nas_blackbox.py [--quick] [--json PATH] [--cache DIR]
        [--seeds 30] [--gp-seeds 10] [--parts tune,single,multi]

* **tune** (validation of the method, not the reported task): REA's population and tournament
  sizes on NAS-Bench-201 *cifar100*, 100 queries, 20 seeds; the best pair is the sampler's
  default (:class:`slem.automl.nas.RegularizedEvolutionSampler`), then used unchanged below.
* **single** (cifar10-valid, 100 queries, ``--seeds`` seeds): regret = the table's best mean
  validation accuracy minus the best one found, in accuracy points, after each query. random,
  REA, TPE and GP through :func:`slem.automl.nas.blackbox_search` (an architecture already in
  the study is not queried again); BOHB exactly as ``benchmarks/hpo.py`` runs it on
  ``tabular_bench`` (TPE + Hyperband over the table's 3 seeds as budgets, a trial stopped at
  b of 3 seeds costing b / 3 of a query, so 100 queries = 100 full evaluations).
* **multi** (cifar10-valid, 100 trials): hypervolume of (validation accuracy, latency) and of
  (validation accuracy, model size) at 100 trials, reference point = the worst value of each
  objective over the 15,625 cells, divided by the hypervolume of the table's true Pareto front.

Selection is on validation accuracy only: the tables hold no test accuracy. Every run uses
one thread.

Findings (30 seeds) are on the page ``docs/results/nas.md`` (``benchmarks/report.py nas``): REA
reaches a regret of 0.08 points at 100 queries, random search 0.59; BOHB lands between them,
above random, unlike Dong & Yang 2020 (Table 5), whose cheap budgets were 12-epoch results;
REA's hypervolume exceeds NSGA-II's on both objective pairs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from common import Cache, base_parser
from slem.automl.nas import (
    blackbox_search,
    hypervolume,
    nasbench201_cells,
    nasbench201_table,
)
from slem.train.threads import set_threads

RESULTS = Path(__file__).resolve().parent / "results"
DATASET = "cifar10-valid"
TUNE_DATASET = "cifar100"
QUERIES = 100
SINGLE = ("random", "REA", "TPE", "BOHB", "GP")
MULTI = ("random", "REA", "MOTPE", "NSGA-II")
SAMPLER = {"random": "random", "REA": "evolution", "TPE": "tpe", "GP": "gp"}
MULTI_SAMPLER = {"random": "random", "REA": "evolution", "MOTPE": "tpe", "NSGA-II": "nsga2"}
COMPARE = [("REA", "BOHB"), ("BOHB", "random"), ("REA", "TPE"), ("GP", "REA")]
PAIRS = {"latency": "minimize", "model_size": "minimize"}
TUNE_GRID = [(p, s) for p in (5, 10, 20, 50) for s in (3, 5, 10, 20) if s <= p]
TUNE_GRID_MULTI = [(p, s) for p in (10, 20) for s in (3, 5, 10)]
# Dong & Yang, ICLR 2020, Table 5, cifar10-valid validation accuracy (mean +- std, 500 runs,
# 12,000 s simulated search budget)
PUBLISHED = {"REA": (91.19, 0.31), "random": (90.93, 0.36), "BOHB": (90.82, 0.53)}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def ci95(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample std and the 95 % t-interval of the mean."""
    from scipy import stats

    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


# ---------------------------------------------------------------------- single objective


def best_curve(study: optuna.Study, optimum: float, n: int) -> list[float]:
    """Regret (accuracy points) after each of the first ``n`` complete trials."""
    done = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=lambda t: t.number,
    )[:n]
    best = np.maximum.accumulate([float(t.values[0]) for t in done])
    return [float(optimum - b) for b in best]


def single_run(method: str, seed: int, dataset: str, n: int, **options: Any) -> dict[str, Any]:
    if method == "BOHB":
        import hpo

        regret = hpo.regret_run("nasbench201/cifar10", "BOHB", seed, n)["regret"]
        return {"regret": [100.0 * r for r in regret]}  # 1 - fraction -> accuracy points
    space, evaluate, optimum = nasbench201_table(dataset)
    study = blackbox_search(
        space,
        evaluate,
        [("val_accuracy", "maximize")],
        SAMPLER[method],
        n,
        seed,
        study_name=f"{dataset}|{method}|{seed}",
        sampler_options=options,
    )
    return {"regret": best_curve(study, optimum, n), "trials": len(study.trials)}


def tune(cache: Cache, seeds: int, n: int) -> list[dict[str, Any]]:
    rows = []
    for p, s in TUNE_GRID:
        finals = []
        for seed in range(seeds):
            row = cache.run(
                f"tune|{TUNE_DATASET}|P={p}|S={s}|{seed}|{n}",
                lambda p=p, s=s, seed=seed: single_run(
                    "REA", seed, TUNE_DATASET, n, population_size=p, sample_size=s
                ),
                part="tune",
                population_size=p,
                sample_size=s,
                seed=seed,
            )
            finals.append(row["regret"][-1])
        mean, std, lo, hi = ci95(finals)
        rows.append(
            {
                "population_size": p,
                "sample_size": s,
                "seeds": seeds,
                "mean": mean,
                "std": std,
                "ci95": [lo, hi],
            }
        )
    return rows


def tune_multi(cache: Cache, seeds: int, n: int) -> list[dict[str, Any]]:
    """REA's sizes for two objectives: normalized accuracy-latency hypervolume on cifar100."""
    _, reference, true_hv = front_reference("latency", TUNE_DATASET)
    rows = []
    for p, s in TUNE_GRID_MULTI:
        finals = []
        for seed in range(seeds):
            row = cache.run(
                f"tune-multi|{TUNE_DATASET}|latency|P={p}|S={s}|{seed}|{n}",
                lambda p=p, s=s, seed=seed: multi_run(
                    "REA", "latency", seed, n, TUNE_DATASET, population_size=p, sample_size=s
                ),
                part="tune-multi",
                population_size=p,
                sample_size=s,
                seed=seed,
            )
            v = np.array(row["values"])
            finals.append(hypervolume(v, reference, ["maximize", "minimize"]) / true_hv)
        mean, std, lo, hi = ci95(finals)
        rows.append(
            {
                "population_size": p,
                "sample_size": s,
                "seeds": seeds,
                "hv_mean": mean,
                "hv_std": std,
                "ci95": [lo, hi],
            }
        )
    return rows


def single(cache: Cache, seeds: int, gp_seeds: int, n: int) -> dict[str, list[list[float]]]:
    curves: dict[str, list[list[float]]] = {}
    for method in SINGLE:
        for seed in range(gp_seeds if method == "GP" else seeds):
            row = cache.run(
                f"single|{DATASET}|{method}|{seed}|{n}",
                lambda m=method, s=seed: single_run(m, s, DATASET, n),
                part="single",
                method=method,
                seed=seed,
            )
            curves.setdefault(method, []).append(row["regret"])
    return curves


def single_summary(curves: dict[str, list[list[float]]], optimum: float) -> list[dict[str, Any]]:
    from scipy import stats

    out = []
    for method, cs in curves.items():
        for budget in (10, 25, 50, QUERIES):
            finals = [c[budget - 1] for c in cs if len(c) >= budget]
            if not finals:
                continue
            mean, std, lo, hi = ci95(finals)
            out.append(
                {
                    "method": method,
                    "queries": budget,
                    "seeds": len(finals),
                    "regret_mean": mean,
                    "regret_std": std,
                    "regret_ci95": [lo, hi],
                    "val_accuracy_mean": optimum - mean,
                }
            )
    if "REA" in curves and "random" in curves:
        rea = [c[-1] for c in curves["REA"]]
        rnd = [c[-1] for c in curves["random"]]
        test = stats.mannwhitneyu(rea, rnd, alternative="less")
        out.append({"method": "REA < random (Mann-Whitney U, one-sided)", "p": float(test.pvalue)})
    for a, b in COMPARE:
        if a in curves and b in curves:
            x, y = [c[-1] for c in curves[a]], [c[-1] for c in curves[b]]
            test = stats.mannwhitneyu(x, y, alternative="two-sided")
            out.append(
                {
                    "method": f"{a} vs {b} final regret (Mann-Whitney U, two-sided)",
                    "p": float(test.pvalue),
                }
            )
    return out


# ---------------------------------------------------------------------- multi-objective


def front_reference(second: str, dataset: str = DATASET) -> tuple[np.ndarray, np.ndarray, float]:
    """(values of all cells (15625, 2), reference point, hypervolume of the true front)."""
    _, metrics = nasbench201_cells(dataset)
    values = np.stack([metrics["val_accuracy"], metrics[second]], axis=1)
    directions = ["maximize", PAIRS[second]]
    reference = np.array([values[:, 0].min(), values[:, 1].max()])
    return values, reference, hypervolume(values, reference, directions)


def multi_run(
    method: str, second: str, seed: int, n: int, dataset: str = DATASET, **options: Any
) -> dict[str, Any]:
    space, evaluate, _ = nasbench201_table(dataset)
    study = blackbox_search(
        space,
        evaluate,
        [("val_accuracy", "maximize"), (second, PAIRS[second])],
        MULTI_SAMPLER[method],
        n,
        seed,
        study_name=f"{dataset}|{method}|{second}|{seed}",
        sampler_options=options,
    )
    done = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=lambda t: t.number,
    )[:n]
    return {"values": [list(map(float, t.values)) for t in done]}


def multi(cache: Cache, seeds: int, n: int) -> list[dict[str, Any]]:
    rows = []
    for second in PAIRS:
        _, reference, true_hv = front_reference(second)
        directions = ["maximize", PAIRS[second]]
        finals_by_method: dict[str, list[float]] = {}
        for method in MULTI:
            curves = []
            for seed in range(seeds):
                row = cache.run(
                    f"multi|{DATASET}|{method}|{second}|{seed}|{n}",
                    lambda m=method, s=seed, sec=second: multi_run(m, sec, s, n),
                    part="multi",
                    method=method,
                    second=second,
                    seed=seed,
                )
                v = np.array(row["values"])
                curves.append(
                    [
                        hypervolume(v[:k], reference, directions) / true_hv
                        for k in range(1, len(v) + 1)
                    ]
                )
            finals_by_method[method] = [c[-1] for c in curves]
            for budget in sorted(b for b in {25, 50, n} if b <= n):
                finals = [c[budget - 1] for c in curves]
                mean, std, lo, hi = ci95(finals)
                rows.append(
                    {
                        "objectives": f"val_accuracy-{second}",
                        "method": method,
                        "trials": budget,
                        "seeds": seeds,
                        "hv_mean": mean,
                        "hv_std": std,
                        "hv_ci95": [lo, hi],
                        "reference": reference.tolist(),
                        "true_front_hv": true_hv,
                        "curve_mean": np.mean(curves, axis=0).tolist() if budget == n else None,
                    }
                )
        if "NSGA-II" in finals_by_method:
            from scipy import stats

            for method in ("REA", "MOTPE"):
                if method in finals_by_method:
                    test = stats.mannwhitneyu(
                        finals_by_method[method],
                        finals_by_method["NSGA-II"],
                        alternative="two-sided",
                    )
                    rows.append(
                        {
                            "objectives": f"val_accuracy-{second}",
                            "test": f"{method} vs NSGA-II at {n} (Mann-Whitney U, two-sided)",
                            "p": float(test.pvalue),
                        }
                    )
    return rows


# ---------------------------------------------------------------------- reporting


def plot(
    curves: dict[str, list[list[float]]], multi_rows: list[dict[str, Any]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slem.report.plots import save_figure

    panels = 1 + bool(multi_rows)
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.2))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    for method, cs in curves.items():
        arr = np.array(cs)
        mean = arr.mean(0)
        half = 1.96 * arr.std(0, ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else 0 * mean
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, label=f"{method} ({len(arr)} seeds)")
        ax.fill_between(x, np.maximum(mean - half, 1e-2), mean + half, alpha=0.2)
    ax.set_yscale("log")
    ax.set_ylim(1e-2, 5.0)
    ax.set_xlabel("queries (full evaluations)")
    ax.set_ylabel("regret, validation accuracy points (mean, 95% CI)")
    ax.set_title(f"NAS-Bench-201 {DATASET}", fontsize=9)
    ax.legend(fontsize=8)
    if multi_rows:
        ax = axes[1]
        for r in multi_rows:
            if r.get("curve_mean") is None or r["objectives"] != "val_accuracy-latency":
                continue
            c = r["curve_mean"]
            ax.plot(np.arange(1, len(c) + 1), c, label=r["method"])
        ax.set_xlabel("trials")
        ax.set_ylabel("hypervolume / true front's (mean)")
        ax.set_title("accuracy vs latency", fontsize=9)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", default="tune,single,multi")
    parser.add_argument("--gp-seeds", type=int, default=10, help="GP is slow: fewer seeds")
    parser.add_argument("--tune-seeds", type=int, default=20)
    parser.set_defaults(seeds=30)
    args = parser.parse_args()
    set_threads(1)
    quick = args.quick
    cache_dir = Path(args.cache) if args.cache else RESULTS / "nas"
    if quick and args.cache is None:
        cache_dir = Path("/tmp") / "slem_nas_quick"
    cache = Cache(cache_dir)
    seeds = 2 if quick else args.seeds
    n = 30 if quick else QUERIES
    parts = args.parts.split(",")
    start = time.perf_counter()
    _, _, optimum = nasbench201_table(DATASET)
    doc: dict[str, Any] = {
        "dataset": DATASET,
        "optimum_val_accuracy": optimum,
        "queries": n,
        "published_table5": PUBLISHED,
    }
    if "tune" in parts:
        doc["tune"] = tune(cache, 2 if quick else args.tune_seeds, n)
        doc["tune_multi"] = tune_multi(cache, 2 if quick else args.tune_seeds, n)
    curves: dict[str, list[list[float]]] = {}
    if "single" in parts:
        curves = single(cache, seeds, min(seeds, 1 if quick else args.gp_seeds), n)
        doc["single"] = single_summary(curves, optimum)
        doc["single_curves_mean"] = {m: np.mean(c, axis=0).tolist() for m, c in curves.items()}
    if "multi" in parts:
        doc["multi"] = multi(cache, seeds, n)
    doc["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps({k: doc[k] for k in ("single", "multi") if k in doc}, indent=1))
    print(f"{doc['seconds']:.0f} s (the page: python benchmarks/report.py nas)")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=float))
    if not quick:
        (RESULTS / "nas_blackbox.json").write_text(json.dumps(doc, indent=2, default=float))
        if curves:
            plot(curves, doc.get("multi", []), RESULTS / "nas_blackbox.png")


if __name__ == "__main__":
    main()
