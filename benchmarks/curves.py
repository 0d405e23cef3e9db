"""Learning-curve extrapolation (issue 22): the parametric ensemble against the meta-learned
extrapolator ``h`` on LCDB, and both as Optuna pruners on the MNIST-1D curve table.

    OMP_NUM_THREADS=1 python benchmarks/curves.py [--quick] [--json PATH] [--seeds 3]
        [--study-seeds 10] [--parts lcdb,pruner,ship] [--cache DIR]

* **lcdb**: curves of the ``lcdb`` package (``database-accuracy.csv``, read without importing
  the package): the validation error rate (1 - ``score_valid``) of one learner on one OpenML
  dataset over training-set sizes (anchors 16, 23, 32, ... x sqrt 2), one curve per
  (dataset, learner): its first outer and inner seed. Observed: the anchors up to 10% of the
  curve's last anchor (at least 3); target: the error at the last anchor. Per seed, the
  datasets (openmlid) are split 70 / 10 / 20 into meta-train, calibration and test; ``h`` is
  trained on meta-train curves cut at 5, 10, 20 and 40% of their last anchor, its conformal
  offset set on the calibration curves at the 10% cut, and everything is scored on the test
  curves: mean absolute error of each parametric family, their ensemble (median), ``h``
  (median) and the last observed value, and the share of final values inside the 90%
  intervals.
* **pruner**: ``benchmarks/results/curves/mnist1d_curves.jsonl`` (300 configurations x 30
  epochs of validation accuracy, ``benchmarks/curves_table.py``). A study visits the
  configurations in a random order (one per seed, ``--study-seeds``), each trial reporting
  its validation accuracy after every epoch, and may stop it; the cost is the epochs
  actually trained. Pruners: none, Optuna's median (5 startup trials, 3 warm-up steps) and
  Hyperband (min 1, max 30 epochs, factor 3), and :class:`slem.automl.curve_pruner.
  CurvePruner` with the parametric ensemble and with ``h`` (5 startup trials, 3 warm-up
  steps, confidence 0.95). ``h`` for a configuration comes from the fold (5 folds over
  configurations) that did not see it: trained on all LCDB curves and the other folds'
  MNIST-1D curves cut at every epoch from 3 to 29. Reference: the best final validation
  accuracy of 100 trials without pruning (3,000 epochs); reported: the best found at equal
  budgets, its test accuracy, and the epochs each pruner needs to come within 0.2 points of
  the reference.
* **ship**: ``h`` trained on all LCDB curves and all MNIST-1D curves (10% held out for the
  conformal offset), saved to ``src/slem/automl/data/curve_model``.

One thread throughout. Results: ``benchmarks/results/curves.json`` and the plots
``benchmarks/results/curves/*.png``; the page is ``docs/results/curves.md``
(``benchmarks/report.py curves``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util
import json
import math
import statistics
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import optuna

from common import base_parser
from slem.automl.curve_model import (
    SHIPPED,
    CurveModel,
    ParametricExtrapolator,
    features,
    train_curve_model,
)
from slem.automl.curve_pruner import CurvePruner
from slem.automl.curves import (
    FAMILY_NAMES,
    Extrapolation,
    ensemble_canonical,
    family_predictions,
    normalize,
)
from slem.train.threads import set_threads

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = RESULTS / "curves" / "mnist1d_curves.jsonl"
LCDB_CUTS = (0.05, 0.1, 0.2, 0.4)
EVAL_CUT = 0.1
EPOCHS = 30
REF_TRIALS = 100
TOLERANCE = 0.2
PRUNERS = ("none", "median", "hyperband", "parametric", "h")
HIDDEN = 32
CONFIDENCES = (0.55, 0.7, 0.85, 0.95)


def finite(v: Any) -> Any:
    """``v`` with every non-finite float as None (strict JSON)."""
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [finite(x) for x in v]
    if isinstance(v, float | np.floating) and not math.isfinite(v):
        return None
    return v


def mean_std(xs: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "n": len(xs),
    }


# ----------------------------------------------------------------------------- data
def lcdb_curves(quick: bool) -> list[dict[str, Any]]:
    """One validation-error curve per (dataset, learner): dicts with openmlid, learner,
    anchors, errors."""
    import pandas as pd

    spec = importlib.util.find_spec("lcdb")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the lcdb package is missing: pip install 'slem[bench]'")
    path = Path(spec.submodule_search_locations[0]) / "database-accuracy.csv"
    cols = ["openmlid", "learner", "size_train", "outer_seed", "inner_seed", "score_valid"]
    df = pd.read_csv(path, usecols=cols).dropna(subset=["score_valid"])
    first = df.groupby(["openmlid", "learner"])[["outer_seed", "inner_seed"]].transform("min")
    df = df[(df.outer_seed == first.outer_seed) & (df.inner_seed == first.inner_seed)]
    out = []
    for (oid, learner), g in df.groupby(["openmlid", "learner"], sort=True):
        g = g.groupby("size_train")["score_valid"].mean().sort_index()
        anchors = g.index.to_numpy(dtype=float)
        if len(anchors) < 4 or np.sum(anchors <= EVAL_CUT * anchors[-1]) < 3:
            continue
        out.append(
            {
                "openmlid": int(oid),
                "learner": str(learner).rsplit(".", 1)[-1],
                "anchors": anchors,
                "errors": 1.0 - g.to_numpy(dtype=float),
            }
        )
    if quick:
        out = out[::8]
    return out


def mnist_curves() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in TABLE.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["config"])


def cut_pair(
    steps: np.ndarray, vals: np.ndarray, n_obs: int, horizon: float, final: float, direction: str
) -> tuple[np.ndarray, float, dict[str, tuple[float, float]], Any]:
    """Features, canonical target, family fits and the normalization of one cut."""
    n = normalize(steps[:n_obs], vals[:n_obs], horizon, direction)  # type: ignore[arg-type]
    fits = family_predictions(n)
    return features(n, fits), float(n.to_canonical(final)), fits, n


def clip01(v: Any) -> float:
    """Error rates live in [0, 1]: every method's prediction is clipped there."""
    return float(np.clip(v, 0.0, 1.0))


def lcdb_pairs(curves: list[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    """Per cut: arrays over curves (-1 where the cut has under 3 points)."""
    out: dict[float, dict[str, Any]] = {}
    for cut in LCDB_CUTS:
        feats, targets, fam, ens, last, finals, scales, centers, ok = ([] for _ in range(9))
        for c in curves:
            a, e = c["anchors"], c["errors"]
            k = int(np.sum(a <= cut * a[-1]))
            if k < 3 or k >= len(a):
                ok.append(False)
                feats.append(np.zeros(0))
                targets.append(0.0)
                fam.append({})
                ens.append((0.0, 0.0, 0.0))
                scales.append(1.0)
                centers.append(0.0)
                finals.append(float(e[-1]))
                last.append(float(e[-1]))
                continue
            f, t, fits, n = cut_pair(a, e, k, a[-1], e[-1], "minimize")
            ok.append(True)
            feats.append(f)
            targets.append(t)
            fam.append({name: clip01(n.to_value(p)) for name, (p, _) in fits.items()})
            med, lo, hi = ensemble_canonical(fits, k)
            ens.append(tuple(clip01(n.to_value(v)) for v in (med, lo, hi)))
            scales.append(n.scale)
            centers.append(n.center)
            finals.append(float(e[-1]))
            last.append(float(e[k - 1]))
        out[cut] = {
            "ok": np.array(ok),
            "feats": feats,
            "targets": np.array(targets),
            "families": fam,
            "ensemble": ens,
            "scale": np.array(scales),
            "center": np.array(centers),
            "final": np.array(finals),
            "last": np.array(last),
        }
    return out


def mnist_pairs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Cuts at every epoch 3..29 of every configuration (maximize validation accuracy)."""
    feats, targets, config = [], [], []
    steps = np.arange(1, EPOCHS + 1, dtype=float)
    for r in rows:
        v = np.asarray(r["val_acc"], dtype=float)
        for k in range(3, EPOCHS):
            f, t, _, _ = cut_pair(steps, v, k, EPOCHS, v[-1], "maximize")
            feats.append(f)
            targets.append(t)
            config.append(r["config"])
    return {"feats": np.array(feats), "targets": np.array(targets), "config": np.array(config)}


# ----------------------------------------------------------------------------- lcdb
def lcdb_part(
    curves: list[dict[str, Any]], pairs: dict[float, dict[str, Any]], seeds: int, epochs: int
) -> dict[str, Any]:
    ids = np.array([c["openmlid"] for c in curves])
    uniq = np.unique(ids)
    per_seed: list[dict[str, Any]] = []
    examples: dict[str, Any] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        perm = rng.permutation(uniq)
        n_tr, n_cal = int(0.7 * len(perm)), int(0.1 * len(perm))
        train_ids, cal_ids = set(perm[:n_tr]), set(perm[n_tr : n_tr + n_cal])
        is_tr = np.array([i in train_ids for i in ids])
        is_cal = np.array([i in cal_ids for i in ids])
        is_te = ~(is_tr | is_cal)
        xs, ys = [], []
        for cut in LCDB_CUTS:
            p = pairs[cut]
            m = p["ok"] & is_tr
            xs += [p["feats"][i] for i in np.flatnonzero(m)]
            ys.append(p["targets"][m])
        ev = pairs[EVAL_CUT]
        cal = ev["ok"] & is_cal
        start = time.perf_counter()
        model = train_curve_model(
            np.array(xs),
            np.concatenate(ys),
            calib=(np.array([ev["feats"][i] for i in np.flatnonzero(cal)]), ev["targets"][cal]),
            hidden=HIDDEN,
            epochs=epochs,
            seed=seed,
        )
        fit_s = time.perf_counter() - start
        te = np.flatnonzero(ev["ok"] & is_te)
        final = ev["final"][te]
        res: dict[str, Any] = {"seed": seed, "test_curves": len(te), "train_pairs": len(xs)}
        res["train_seconds"] = round(fit_s, 1)
        mae: dict[str, float] = {}
        for name in FAMILY_NAMES:
            pred = np.array([ev["families"][i][name] for i in te])
            mae[name] = float(np.mean(np.abs(pred - final)))
        ens = np.array([ev["ensemble"][i] for i in te])
        mae["ensemble"] = float(np.mean(np.abs(ens[:, 0] - final)))
        mae["last value"] = float(np.mean(np.abs(ev["last"][te] - final)))
        q = model.predict_features(np.array([ev["feats"][i] for i in te]))
        sc, ce = ev["scale"][te], ev["center"][te]
        h_med = np.clip(ce + sc * q[:, 1], 0, 1)
        h_lo = np.clip(ce + sc * (q[:, 0] - model.conformal), 0, 1)
        h_hi = np.clip(ce + sc * (q[:, 2] + model.conformal), 0, 1)
        mae["h"] = float(np.mean(np.abs(h_med - final)))
        res["mae"] = mae
        res["coverage"] = {
            "ensemble": float(np.mean((ens[:, 1] <= final) & (final <= ens[:, 2]))),
            "h": float(np.mean((h_lo <= final) & (final <= h_hi))),
            "h (no conformal)": float(
                np.mean((ce + sc * q[:, 0] <= final) & (final <= ce + sc * q[:, 2]))
            ),
        }
        res["width"] = {
            "ensemble": float(np.median(ens[:, 2] - ens[:, 1])),
            "h": float(np.median(h_hi - h_lo)),
        }
        res["conformal"] = model.conformal
        per_seed.append(res)
        print(json.dumps(res), flush=True)
        if seed == 0:
            order = np.argsort([curves[i]["openmlid"] for i in te])
            picks = te[order[:: max(1, len(order) // 6)][:6]]
            examples = {
                "curves": [
                    {
                        "name": f"{curves[i]['learner']} on OpenML {curves[i]['openmlid']}",
                        "anchors": curves[i]["anchors"].tolist(),
                        "errors": curves[i]["errors"].tolist(),
                        "ensemble": list(ev["ensemble"][i]),
                        "h": [
                            float(h_lo[j]),
                            float(h_med[j]),
                            float(h_hi[j]),
                        ],
                    }
                    for i in picks
                    for j in [int(np.flatnonzero(te == i)[0])]
                ]
            }
    methods = list(per_seed[0]["mae"])
    summary = {
        "mae": {m: mean_std([r["mae"][m] for r in per_seed]) for m in methods},
        "coverage": {
            m: mean_std([r["coverage"][m] for r in per_seed]) for m in per_seed[0]["coverage"]
        },
        "width": {m: mean_std([r["width"][m] for r in per_seed]) for m in per_seed[0]["width"]},
    }
    best_param = min([*FAMILY_NAMES, "ensemble"], key=lambda m: summary["mae"][m]["mean"])
    h_mae, p_mae = summary["mae"]["h"]["mean"], summary["mae"][best_param]["mean"]
    cov = summary["coverage"]["h"]["mean"]
    summary["targets"] = {
        "mae": {
            "target": "h's MAE <= the best parametric fit's",
            "best_parametric": best_param,
            "h": h_mae,
            "parametric": p_mae,
            "pass": h_mae <= p_mae,
            "shortfall": max(0.0, h_mae - p_mae),
        },
        "coverage": {
            "target": "h's 90% interval covers 85-95% of final values",
            "h": cov,
            "pass": 0.85 <= cov <= 0.95,
            "shortfall": max(0.0, 0.85 - cov, cov - 0.95),
        },
    }
    return {"per_seed": per_seed, "summary": summary, "examples": examples,
            "n_curves": len(curves), "n_datasets": len(uniq)}  # fmt: skip


# ----------------------------------------------------------------------------- pruner
class Lookup:
    """The extrapolator a study's curve pruner calls: ``h`` of the current configuration's
    fold (or the parametric ensemble), its answers memoized per (configuration, steps) at
    confidence 0.95 and rescaled to other confidences as both extrapolators do (the
    half-widths times ``z(confidence) / z(0.95)``)."""

    def __init__(self, models: dict[int, Any]) -> None:
        self.models = models
        self.config = -1
        self.memo: dict[tuple[int, int], Extrapolation] = {}

    def predict(
        self, steps: Any, values: Any, horizon: float, direction: Any = "minimize",
        confidence: float = 0.95,
    ) -> Extrapolation:  # fmt: skip
        key = (self.config, len(values))
        if key not in self.memo:
            self.memo[key] = self.models[self.config].predict(
                steps, values, horizon, direction, 0.95
            )
        e = self.memo[key]
        f = NormalDist().inv_cdf(confidence) / NormalDist().inv_cdf(0.95)
        return Extrapolation(
            e.median, e.median - f * (e.median - e.lower), e.median + f * (e.upper - e.median)
        )


def simulate(
    rows: list[dict[str, Any]], order: np.ndarray, pruner: optuna.pruners.BasePruner,
    lookup: Lookup | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One study over the configurations in ``order``: per trial, the epochs it trained and
    its final validation and test accuracy (None when pruned)."""
    study = optuna.create_study(
        direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    log: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        r = rows[int(order[trial.number])]
        if lookup is not None:
            lookup.config = int(r["config"])
        for epoch, acc in enumerate(r["val_acc"], start=1):
            trial.report(float(acc), epoch)
            if epoch < EPOCHS and trial.should_prune():
                log.append({"epochs": epoch, "val": None, "test": None})
                raise optuna.TrialPruned()
        log.append({"epochs": EPOCHS, "val": float(r["val_acc"][-1]), "test": r["test_acc"]})
        return float(r["val_acc"][-1])

    study.optimize(objective, n_trials=len(order))
    return log


def best_at(log: list[dict[str, Any]], budget: float) -> tuple[float, float, int]:
    """The best final val accuracy (its test accuracy) of trials finished within ``budget``
    epochs, and the trials started."""
    spent, best, test, n = 0, -math.inf, math.nan, 0
    for t in log:
        spent += t["epochs"]
        if spent > budget:
            break
        n += 1
        if t["val"] is not None and t["val"] > best:
            best, test = t["val"], t["test"]
    return best, test, n


def epochs_to(log: list[dict[str, Any]], target: float) -> float:
    spent = 0
    for t in log:
        spent += t["epochs"]
        if t["val"] is not None and t["val"] >= target:
            return float(spent)
    return math.inf


def fold_models(
    rows: list[dict[str, Any]], mp: dict[str, Any], lcdb: tuple[np.ndarray, np.ndarray],
    folds: int, epochs: int,
) -> dict[int, CurveModel]:  # fmt: skip
    """Per configuration, ``h`` trained without that configuration's fold."""
    configs = np.array([r["config"] for r in rows])
    rng = np.random.default_rng(0)
    fold_of = dict(zip(rng.permutation(configs), np.arange(len(configs)) % folds, strict=True))
    pair_fold = np.array([fold_of[int(c)] for c in mp["config"]])
    out: dict[int, CurveModel] = {}
    for k in range(folds):
        train_cfg = [c for c in configs if fold_of[int(c)] != k]
        cal_cfg = set(np.random.default_rng(k).permutation(train_cfg)[: len(train_cfg) // 10])
        is_cal = np.array([int(c) in cal_cfg for c in mp["config"]])
        tr = (pair_fold != k) & ~is_cal
        model = train_curve_model(
            np.concatenate([lcdb[0], mp["feats"][tr]]),
            np.concatenate([lcdb[1], mp["targets"][tr]]),
            calib=(mp["feats"][is_cal], mp["targets"][is_cal]),
            hidden=HIDDEN,
            epochs=epochs,
            seed=k,
        )
        print(f"fold {k}: conformal {model.conformal:.3f}", flush=True)
        for c in configs:
            if fold_of[int(c)] == k:
                out[int(c)] = model
    return out


def make_pruner(name: str, lookup: Lookup | None, confidence: float) -> Any:
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=EPOCHS, reduction_factor=3
        )
    assert lookup is not None
    return CurvePruner(EPOCHS, lookup, n_startup_trials=5, n_warmup_steps=3, confidence=confidence)


def tune_confidence(
    rows: list[dict[str, Any]], lookups: dict[str, Lookup], seeds: int
) -> dict[str, Any]:
    """Per curve pruner, the confidence with the best mean best-at-1000-epochs over ``seeds``
    tuning orders (seeds 1000+, not the reported ones)."""
    out: dict[str, Any] = {}
    for name, lookup in lookups.items():
        scores = {}
        for conf in CONFIDENCES:
            vals = []
            for seed in range(seeds):
                order = np.random.default_rng(1000 + seed).permutation(len(rows))
                log = simulate(rows, order, make_pruner(name, lookup, conf), lookup)
                vals.append(best_at(log, REF_TRIALS * EPOCHS / 3)[0])
            scores[str(conf)] = statistics.fmean(vals)
        best = max(CONFIDENCES, key=lambda c: (scores[str(c)], c))
        out[name] = {"scores": scores, "chosen": best}
        print(f"tune {name}: {scores} -> {best}", flush=True)
    return out


def pruner_part(
    rows: list[dict[str, Any]], models: dict[int, CurveModel], seeds: int, tune_seeds: int
) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    par = ParametricExtrapolator()
    lookups = {
        "parametric": Lookup({int(r["config"]): par for r in rows}),
        "h": Lookup(models),
    }
    tuned = tune_confidence(rows, lookups, tune_seeds)
    budgets = [500, 1000, 1500, 2000, 3000]
    ref_budget = REF_TRIALS * EPOCHS
    per_seed = []
    logs: dict[str, list[list[dict[str, Any]]]] = {p: [] for p in PRUNERS}
    for seed in range(seeds):
        order = np.random.default_rng(100 + seed).permutation(len(rows))
        res: dict[str, Any] = {"seed": seed}
        for name in PRUNERS:
            lookup = lookups.get(name)
            conf = tuned[name]["chosen"] if name in tuned else 0.95
            pruner = make_pruner(name, lookup, conf)
            start = time.perf_counter()
            log = simulate(rows, order, pruner, lookup)
            logs[name].append(log)
            res[name] = {
                "seconds": round(time.perf_counter() - start, 1),
                "epochs_total": sum(t["epochs"] for t in log),
                "at": {str(b): best_at(log, b)[:2] for b in budgets},
            }
        ref = best_at(logs["none"][-1], ref_budget)[0]
        res["reference"] = ref
        first_ref = epochs_to(logs["none"][-1], ref - TOLERANCE)
        for name in PRUNERS:
            e = epochs_to(logs[name][-1], ref - TOLERANCE)
            res[name]["epochs_to_reference"] = e
            res[name]["speedup"] = ref_budget / e
            res[name]["speedup_vs_no_pruning_first"] = first_ref / e
            res[name]["gap_at_third"] = best_at(logs[name][-1], ref_budget / 3)[0] - ref
        per_seed.append(res)
        shown = {
            k: v if k in ("seed", "reference") else
            {"sp": round(v["speedup"], 2), "gap": round(v["gap_at_third"], 2), "s": v["seconds"]}
            for k, v in res.items()
        }  # fmt: skip
        print(json.dumps(shown), flush=True)
    summary: dict[str, Any] = {"reference_budget": ref_budget, "budgets": budgets,
                               "tuned_confidence": tuned}  # fmt: skip
    for name in PRUNERS:
        summary[name] = {
            "epochs_to_reference": mean_std([r[name]["epochs_to_reference"] for r in per_seed]),
            "speedup": mean_std([r[name]["speedup"] for r in per_seed]),
            "speedup_vs_no_pruning_first": mean_std(
                [r[name]["speedup_vs_no_pruning_first"] for r in per_seed]
            ),
            "gap_at_third": mean_std([r[name]["gap_at_third"] for r in per_seed]),
            "seeds_within_at_third": sum(r[name]["gap_at_third"] >= -TOLERANCE for r in per_seed),
            "at": {
                str(b): {
                    "val": mean_std([r[name]["at"][str(b)][0] for r in per_seed]),
                    "test": mean_std([r[name]["at"][str(b)][1] for r in per_seed]),
                }
                for b in budgets
            },
        }
    third = str(ref_budget // 3)
    h_gap = summary["h"]["gap_at_third"]["mean"]
    h_at = summary["h"]["at"][third]["val"]["mean"]
    rivals = {p: summary[p]["at"][third]["val"]["mean"] for p in ("median", "hyperband")}
    summary["targets"] = {
        "reach": {
            "target": f"h's pruner within {TOLERANCE} points of the {REF_TRIALS}-trial no-pruning "
            f"best with 3x fewer epochs ({ref_budget // 3})",
            "gap_mean": h_gap,
            "pass": h_gap >= -TOLERANCE,
            "shortfall": max(0.0, -TOLERANCE - h_gap),
        },
        "beats": {
            "target": f"h's pruner beats median and Hyperband at equal budget ({third} epochs)",
            "h": h_at,
            **rivals,
            "pass": all(h_at > v for v in rivals.values()),
            "shortfall": max(0.0, *(v - h_at for v in rivals.values())),
        },
    }
    curves_mean = {}
    grid = list(range(100, 9001, 100))
    for name in PRUNERS:
        curves_mean[name] = [
            statistics.fmean(
                max(best_at(lg, b)[0], 0.0) for lg in logs[name]
            ) for b in grid
        ]  # fmt: skip
    return {"per_seed": per_seed, "summary": summary, "plot": {"grid": grid, **curves_mean}}


# ----------------------------------------------------------------------------- plots
def plots(out: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ex = out.get("lcdb", {}).get("examples", {}).get("curves", [])
    if ex:
        fig, axes = plt.subplots(2, 3, figsize=(11, 6.5))
        for ax, c in zip(axes.ravel(), ex, strict=False):
            a, e = np.array(c["anchors"]), np.array(c["errors"])
            seen = a <= EVAL_CUT * a[-1]
            ax.plot(a[seen], e[seen], "ko-", ms=3, label="observed")
            ax.plot(a[~seen], e[~seen], "o", color="0.6", ms=3, label="rest of the curve")
            for k, (name, col) in enumerate((("ensemble", "C0"), ("h", "C3"))):
                lo, med, hi = (c[name][1], c[name][0], c[name][2]) if name == "ensemble" else c[
                    name
                ]  # fmt: skip
                xk = a[-1] * (1.08 if k else 0.93)
                ax.errorbar([xk], [med], yerr=[[med - lo], [hi - med]], fmt="s", color=col,
                            capsize=3, label=name)  # fmt: skip
            ax.set_xscale("log")
            ax.set_title(c["name"], fontsize=8)
            ax.set_xlabel("training-set size")
            ax.set_ylabel("validation error")
        axes.ravel()[0].legend(fontsize=7)
        fig.tight_layout()
        p = directory / "lcdb_examples.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(str(p))
    pl = out.get("pruner", {}).get("plot")
    if pl:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name in PRUNERS:
            ax.plot(pl["grid"], pl[name], label=name)
        ref = statistics.fmean(r["reference"] for r in out["pruner"]["per_seed"])
        ax.axhline(ref - TOLERANCE, color="0.5", ls=":", label="reference - 0.2")
        ax.axvline(REF_TRIALS * EPOCHS / 3, color="0.7", ls="--")
        ax.set_xlabel("epochs trained (all trials)")
        ax.set_ylabel("best final val. accuracy found (%)")
        ax.set_ylim(max(90.0, min(min(v) for k, v in pl.items() if k != "grid")), None)
        ax.set_xscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = directory / "pruner_best_vs_epochs.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(str(p))
    return written


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--study-seeds", type=int, default=10)
    parser.add_argument("--tune-seeds", type=int, default=5)
    parser.add_argument("--parts", default="lcdb,pruner,ship")
    parser.add_argument("--epochs", type=int, default=40, help="h's training epochs")
    args = parser.parse_args()
    set_threads(1)
    parts = args.parts.split(",")
    start = time.perf_counter()
    curves = lcdb_curves(args.quick)
    pairs = lcdb_pairs(curves)
    print(f"lcdb: {len(curves)} curves, features in {time.perf_counter() - start:.0f} s",
          flush=True)  # fmt: skip
    out: dict[str, Any] = {
        "setup": {
            "lcdb": "database-accuracy.csv, validation error 1 - score_valid, one curve per "
            "(dataset, learner) (first outer/inner seed), observed anchors <= 10% of the last",
            "mnist1d": str(TABLE.relative_to(RESULTS.parent.parent)),
            "hidden": HIDDEN,
            "h_epochs": args.epochs,
            "cuts": list(LCDB_CUTS),
        }
    }
    if "lcdb" in parts:
        out["lcdb"] = lcdb_part(curves, pairs, args.seeds, args.epochs)
    rows = mnist_curves()
    mp = mnist_pairs(rows)
    all_lcdb = (
        np.array([f for c in LCDB_CUTS for f, ok in zip(pairs[c]["feats"], pairs[c]["ok"],
                                                          strict=True) if ok]),
        np.concatenate([pairs[c]["targets"][pairs[c]["ok"]] for c in LCDB_CUTS]),
    )  # fmt: skip
    if "pruner" in parts:
        models = fold_models(rows, mp, all_lcdb, 5, args.epochs)
        quick = args.quick
        out["pruner"] = pruner_part(
            rows, models, 2 if quick else args.study_seeds, 1 if quick else args.tune_seeds
        )
    if "ship" in parts and not args.quick:
        rng = np.random.default_rng(0)
        configs = np.array([r["config"] for r in rows])
        cal_cfg = set(rng.permutation(configs)[: len(configs) // 10])
        is_cal = np.array([int(c) in cal_cfg for c in mp["config"]])
        model = train_curve_model(
            np.concatenate([all_lcdb[0], mp["feats"][~is_cal]]),
            np.concatenate([all_lcdb[1], mp["targets"][~is_cal]]),
            calib=(mp["feats"][is_cal], mp["targets"][is_cal]),
            hidden=HIDDEN,
            epochs=args.epochs,
            seed=0,
            info={
                "trained_on": f"{len(curves)} LCDB curves (validation error, cuts at "
                f"{list(LCDB_CUTS)} of the last anchor) and {len(rows) - len(cal_cfg)} "
                "MNIST-1D curves (val accuracy, cut at epochs 3-29)",
                "calibrated_on": f"{len(cal_cfg)} MNIST-1D curves (conformal, 90%)",
                "script": "benchmarks/curves.py",
            },
        )
        model.save(SHIPPED)
        out["ship"] = {"conformal": model.conformal, "path": "src/slem/automl/data/curve_model"}
    out["seconds"] = round(time.perf_counter() - start)
    directory = RESULTS / "curves"
    out["plots"] = [str(Path(p).relative_to(RESULTS)) for p in plots(out, directory)]
    text = json.dumps(finite(out), indent=1, default=float)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(json.dumps({k: out[k]["summary"]["targets"] for k in ("lcdb", "pruner") if k in out},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
