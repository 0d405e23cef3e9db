"""Learned optimizers against tuned hand-designed ones, and a learned black-box optimizer.

    python benchmarks/learned_optimizers.py [--quick] [--json PATH] [--cache DIR] [--seeds 3]

Part 1, the coordinatewise LSTM optimizer (Andrychowicz et al., 2016), meta-trained once on
MLPs (widths 16/32, 1-2 layers, relu/tanh/sigmoid) on MNIST-1D and scikit-learn digits, then
applied frozen to held-out optimizees: a 4x wider MLP, an unseen dataset, and an unseen
architecture (a CNN with BatchNorm). Baselines: SGD, Adam and RMSprop at constant rates, each
rate chosen per target by a grid on validation (seed 0). Final-epoch test accuracy, mean and
std over seeds.

Part 2, the RNN black-box optimizer (Chen et al., 2017), meta-trained per dimension (2, 3, 6)
with the observed-improvement loss on GP samples, quadratics and standard functions, against
random search and Optuna's TPE and GP samplers on held-out functions (Branin, Hartmann-3,
Hartmann-6, unseen GP samples): simple regret after each query, mean and std over repeats,
curves written as PNG. Nothing is tuned per function (``tuning_runs`` 0).

``--quick``: a short meta-training of each, one target and Branin, a few repeats (under 5 min).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import Cache, accuracy_table, base_parser, summarize, train, tuned_runs
from slem.data.functions import held_out
from slem.data.sources.fashion_mnist import find_dir
from slem.methodology import load_methodology
from slem.train.artifacts import save_methodology
from slem.train.bbo import BBOMetaTrainer, random_search_regret, search_regret
from slem.train.config import BBOConfig, LearnedOptimizerConfig
from slem.train.learned_optimizer import OptimizerMetaTrainer

TARGETS: dict[str, dict[str, Any]] = {
    "mnist1d / mlp 128x2 (4x wider) / 10 ep": {
        "data": {"name": "mnist1d"},
        "model": {"arch": "mlp", "width": 128, "depth": 2},
        "epochs": 10,
    },
    "fashion-mnist (8k) / mlp 128x2 (unseen data) / 5 ep": {
        "data": {"name": "fashion-mnist", "size": 8000},
        "model": {"arch": "mlp", "width": 128, "depth": 2},
        "epochs": 5,
    },
    "breast_cancer / mlp 64x2 (unseen data) / 30 ep": {
        "data": {"name": "breast_cancer"},
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "epochs": 30,
    },
    "mnist1d / cnn1d + BatchNorm (unseen architecture) / 10 ep": {
        "data": {"name": "mnist1d"},
        "model": {"arch": "cnn1d", "width": 32},
        "epochs": 10,
    },
}
BASELINES: dict[str, tuple[str, list[float]]] = {
    "SGD": ("sgd", [0.01, 0.03, 0.1, 0.3]),
    "Adam": ("adam", [3e-4, 1e-3, 3e-3, 1e-2]),
    "RMSprop": ("rmsprop", [1e-4, 3e-4, 1e-3, 3e-3]),
}
LEARNED = "LSTM optimizer (learned)"
FUNCTIONS = ["branin", "hartmann3", "hartmann6", "gp2", "gp6"]
BBO_METHODS = ["learned (RNN, L_OI)", "random search", "Optuna TPE", "Optuna GP"]


def target_values(target: str, seed: int, **optim: Any) -> dict[str, Any]:
    spec = TARGETS[target]
    return {
        "method": "erm",
        "data": {**spec["data"], "seed": seed},
        "model": spec["model"],
        "optim": {
            "epochs": spec["epochs"],
            "batch_size": 128,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "schedule": "constant",
            **optim,
        },
        "seed": seed,
    }


# ---------------------------------------------------------------------- part 1


def meta_train_optimizer(cache_dir: Path, iterations: int, meta_seed: int = 0) -> Path:
    """The LSTM optimizer meta-trained with ``meta_seed`` (cached as an artifact)."""
    suffix = f"-meta{meta_seed}" if meta_seed else ""  # seed 0 keeps its original name
    path = cache_dir / "artifacts" / f"lstm-optimizer-{iterations}{suffix}"
    if not (path / "methodology.json").is_file():
        cfg = LearnedOptimizerConfig(iterations=iterations)
        meta = OptimizerMetaTrainer(cfg, seed=meta_seed)
        start = time.perf_counter()
        meta.fit(progress=False)
        save_methodology(
            meta.net,
            path,
            {"learned_optimizer": cfg.model_dump(mode="json")},
            trained_on={"population": [o.name for o in meta.population], "seed": meta_seed},
        )
        print(f"meta-trained the LSTM optimizer in {time.perf_counter() - start:.0f} s")
    return path


def optimizer_rows(
    cache: Cache, targets: list[str], baselines: list[str], seeds: int, artifacts: list[Path]
) -> list[dict[str, Any]]:
    """Every target: the LSTM optimizer of each meta-training seed (``artifacts``) applied
    frozen with each seed, and the tuned baselines."""
    rows: list[dict[str, Any]] = []
    frozen = [load_methodology(a)[0] for a in artifacts]
    for target in targets:
        if TARGETS[target]["data"]["name"] == "fashion-mnist" and find_dir() is None:
            print(f"skipping {target}: Fashion-MNIST files not installed")
            continue
        tag = f"{target}|{TARGETS[target]['epochs']}"
        for meta_seed, (artifact, net) in enumerate(zip(artifacts, frozen, strict=True)):
            for seed in range(seeds):
                values = {**target_values(target, seed), "method": "apply"}
                values["methodology"] = str(artifact)
                rows.append(
                    cache.run(
                        f"{tag}|{LEARNED}|{artifact.name}|{seed}",
                        lambda v=values, n=net: train(v, n),
                        target=target,
                        method=LEARNED,
                        seed=seed,
                        meta_seed=meta_seed,
                        tuning_runs=0,
                    )
                )
        for method in baselines:
            optimizer, grid = BASELINES[method]

            def values_at(lr: float, seed: int, opt: str = optimizer, t: str = target) -> Any:
                return target_values(t, seed, optimizer=opt, lr=lr)

            rows += tuned_runs(cache, tag, target, method, grid, values_at, seeds)
    return rows


# ---------------------------------------------------------------------- part 2


def meta_train_bbo(cache_dir: Path, dim: int, iterations: int) -> Any:
    path = cache_dir / "artifacts" / f"bbo-{dim}d-{iterations}"
    if not (path / "methodology.json").is_file():
        cfg = BBOConfig(dim=dim, iterations=iterations, loss="oi")
        meta = BBOMetaTrainer(cfg)
        start = time.perf_counter()
        meta.fit(progress=False)
        families = {"families": ["gp", "quadratic", "standard"]}
        save_methodology(meta.net, path, cfg, trained_on=families)
        took = time.perf_counter() - start
        print(f"meta-trained the {dim}-D black-box optimizer in {took:.0f} s")
    return load_methodology(path)[0]


def optuna_regret(functions: Any, row: int, budget: int, sampler: str, seed: int) -> list[float]:
    """Best-so-far regret of an Optuna study on function ``row`` of the batch."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make = {"Optuna TPE": optuna.samplers.TPESampler, "Optuna GP": optuna.samplers.GPSampler}
    study = optuna.create_study(sampler=make[sampler](seed=seed))
    full = torch.zeros(len(functions.minimum), functions.dim)

    def objective(trial: Any) -> float:
        x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(functions.dim)]
        full[row] = torch.tensor(x)
        with torch.no_grad():
            return float(functions(full)[row])

    study.optimize(objective, n_trials=budget)
    values = [t.value for t in study.trials]
    best = [min(values[: i + 1]) for i in range(len(values))]
    return [b - float(functions.minimum[row]) for b in best]


def bbo_rows(
    cache: Cache, names: list[str], methods: list[str], repeats: int, budget: int, iters: int
) -> list[dict[str, Any]]:
    rows = []
    nets: dict[int, Any] = {}
    for name in names:
        functions = held_out(name, batch=repeats)
        dim = functions.dim
        for method in methods:

            def curves(fb: Any = functions, m: str = method, d: int = dim) -> dict[str, Any]:
                if m.startswith("learned"):
                    if d not in nets:
                        nets[d] = meta_train_bbo(cache.file.parent, d, iters)
                    regret = search_regret(nets[d], fb, budget).T.tolist()
                elif m == "random search":
                    regret = random_search_regret(fb, budget).T.tolist()
                else:
                    regret = [optuna_regret(fb, r, budget, m, r) for r in range(repeats)]
                return {"curves": regret}

            key = f"bbo|{name}|{method}|{repeats}|{budget}|{iters}"
            result = cache.run(key, curves, target=name, method=method, tuning_runs=0)
            for seed, curve in enumerate(result["curves"]):
                rows.append(
                    {
                        "target": name,
                        "method": method,
                        "seed": seed,
                        "final_regret": curve[-1],
                        "curve": curve,
                        "tuning_runs": 0,
                    }
                )
    return rows


def mean_curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[list[float]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"]), []).append(r["curve"])
    return [
        {
            "target": t,
            "method": m,
            "mean_curve": [statistics.mean(v) for v in zip(*cs, strict=True)],
        }
        for (t, m), cs in groups.items()
    ]


def regret_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| function | method | repeats | final regret (mean ± std) |", "|---|---|---|---|"]
    for r in summarize(rows, "final_regret"):
        lines.append(
            f"| {r['target']} | {r['method']} | {r['seeds']} | "
            f"{r['final_regret']:.4f} ± {r['final_regret_std']:.4f} |"
        )
    return "\n".join(lines)


def plot_regret(rows: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np

    from slem.report.plots import save_figure

    names = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            curves = np.array(
                [r["curve"] for r in rows if (r["target"], r["method"]) == (name, method)]
            )
            if len(curves):
                mean = np.maximum(curves.mean(0), 1e-6)
                ax.plot(np.arange(1, curves.shape[1] + 1), mean, label=method)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("queries")
    axes[0][0].set_ylabel("simple regret (mean)")
    axes[0][-1].legend(fontsize=8)
    return save_figure(fig, out / "bbo_regret.png", dpi=100)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=10, help="searches per function")
    parser.add_argument("--budget", type=int, default=30, help="queries per search")
    parser.add_argument("--optimizer-iterations", type=int, default=1500)
    parser.add_argument(
        "--meta-seeds", type=int, default=1, help="LSTM optimizers meta-trained (seeds 0..N-1)"
    )
    parser.add_argument("--bbo-iterations", type=int, default=1000)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--functions", default=",".join(FUNCTIONS))
    args = parser.parse_args()
    targets, functions = args.targets.split(","), args.functions.split(",")
    baselines, methods = list(BASELINES), list(BBO_METHODS)
    if args.quick:
        targets, functions, baselines = [next(iter(TARGETS))], ["branin"], ["Adam"]
        args.seeds, args.repeats = 1, 3
        args.optimizer_iterations, args.bbo_iterations = 150, 150
        BASELINES["Adam"] = ("adam", [1e-3, 1e-2])
        TARGETS[targets[0]]["epochs"] = 3
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target '{t}'; choose from {', '.join(TARGETS)}")
    cache_dir = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="slem-lopt-"))
    cache = Cache(cache_dir)
    start = time.perf_counter()
    artifacts = [
        meta_train_optimizer(cache_dir, args.optimizer_iterations, s)
        for s in range(args.meta_seeds)
    ]
    opt_rows = optimizer_rows(cache, targets, baselines, args.seeds, artifacts)
    print(accuracy_table(summarize(opt_rows)))
    regret_rows = bbo_rows(
        cache, functions, methods, args.repeats, args.budget, args.bbo_iterations
    )
    print(regret_table(regret_rows))
    plot = plot_regret(regret_rows, cache_dir)
    print(f"total {time.perf_counter() - start:.0f} s; cache {cache.file}; plot {plot}")
    if args.json:
        results = [
            {
                **{
                    k: r.get(k)
                    for k in ("target", "method", "seed", "test_accuracy", "tuning_runs")
                },
                **({"meta_seed": r.get("meta_seed") or 0} if r["method"] == LEARNED else {}),
            }
            for r in opt_rows
        ] + [
            {k: r.get(k) for k in ("target", "method", "seed", "final_regret", "tuning_runs")}
            for r in regret_rows
        ]
        Path(args.json).write_text(
            json.dumps(
                {
                    "results": results,
                    "optimizers": summarize(opt_rows),
                    "black_box": summarize(regret_rows, "final_regret"),
                    "mean_regret_curves": {
                        f"{r['target']}|{r['method']}": r["mean_curve"]
                        for r in mean_curves(regret_rows)
                    },
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
