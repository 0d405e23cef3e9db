"""``study.strategy: hypergradient`` for a ``train`` objective: the learning rate and weight
decay follow online hypergradients of the validation loss within each training run (method
``hypergradient``, :mod:`slem.train.online_hpo`), one run per starting learning rate.

The objective's ``space`` says what is tuned and where it is kept: ``optim.lr`` and/or
``optim.weight_decay``, each a log-scale float range (the same space a blackbox study of the
config searches, so one config runs under either strategy). A run starts at each of
``study.hypergradient.starts`` (learning rates) and at the base config's weight decay (the
range's geometric middle when the base's is outside it). The run of best validation score is
the result; its test score plays no part in choosing it.

A run directory holds ``hpo.yaml`` (the study config), one ``slem train`` run directory per
start (``start-0/``, ...; model, summary, plots), ``runs.csv`` (one row per start),
``trajectories.csv`` (step, epoch, lr, weight_decay, outer_loss of every hyperparameter update
of every run), ``best.json`` and ``best.yaml`` (the best run's config: ``slem train best.yaml``
trains it again).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from slem.automl.config import HPOConfig, TrainObjective
from slem.automl.space import SearchSpace
from slem.errors import SlemError
from slem.rundir import atomic_write_text

#: the config keys the hypergradient strategy tunes, by ``hypergradient.tune`` name
TUNABLE = {"optim.lr": "lr", "optim.weight_decay": "weight_decay"}
RUNS_FILE = "runs.csv"
TRAJECTORIES_FILE = "trajectories.csv"
BEST_JSON = "best.json"
BEST_CONFIG = "best.yaml"

#: ``run(config, run_dir, resume) -> record``: trains one start (the CLI's, with progress)
RunOne = Callable[[Any, Path, bool], Any]


def start_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"start-{k}"


def start_configs(cfg: HPOConfig) -> list[dict[str, Any]]:
    """The training config of every start: the base as method ``hypergradient`` tuning the
    space's keys inside their ranges (see the module doc).

    Raises:
        SlemError: the objective is not ``train``, a space key other than ``optim.lr`` /
            ``optim.weight_decay``, a range that is not a positive log-scale float range, a
            start outside the learning-rate range, or a base method other than ``erm`` /
            ``hypergradient``.
    """
    objective = cfg.objective
    if not isinstance(objective, TrainObjective):
        raise SlemError(
            f"study.strategy hypergradient needs a train objective, not {objective.kind}"
        )
    base = objective.base if isinstance(objective.base, dict) else {}
    method = base.get("method", "erm")
    if method not in ("erm", "hypergradient"):
        raise SlemError(
            f"study.strategy hypergradient tunes an erm run's lr and weight decay online; the "
            f"base config's method is {method}: set method erm or use study.strategy blackbox"
        )
    space = SearchSpace.from_mapping(objective.space)
    ranges: dict[str, tuple[float, float]] = {}
    for p in space.params:
        name = TUNABLE.get(p.name)
        if name is None:
            raise SlemError(
                f"study.strategy hypergradient tunes optim.lr and optim.weight_decay "
                f"(continuous, log scale); '{p.name}' has no hypergradient: leave it out of "
                "the space or use study.strategy blackbox"
            )
        if p.kind != "float" or not p.log or p.when:
            raise SlemError(
                f"space key '{p.name}': study.strategy hypergradient needs an unconditional "
                "float range with log: true"
            )
        assert p.low is not None and p.high is not None
        ranges[name] = (float(p.low), float(p.high))
    if not ranges:
        raise SlemError("the space is empty: give optim.lr and/or optim.weight_decay ranges")
    if objective.metric == "val_loss":
        raise SlemError(
            "study.strategy hypergradient descends the validation loss and keeps the run of "
            "best validation accuracy; objective.metric val_loss applies to study.strategy "
            "blackbox: use val_accuracy or val_balanced_accuracy"
        )
    search = cfg.study.hypergradient
    if "lr" not in ranges and "starts" in search.model_fields_set:
        raise SlemError(
            "study.hypergradient.starts are learning rates, but the space does not tune "
            "optim.lr: add an optim.lr range or drop starts (the run starts at optim.lr)"
        )
    optim = dict(base.get("optim", {}))
    starts = search.starts if "lr" in ranges else [float(optim.get("lr", 0.1))]
    if "lr" in ranges:
        low, high = ranges["lr"]
        outside = [v for v in starts if not low <= v <= high]
        if outside:
            raise SlemError(
                f"study.hypergradient.starts {outside} lie outside the optim.lr range "
                f"[{low:g}, {high:g}]; move them inside or widen the range"
            )
    wd = float(optim.get("weight_decay", 0.0))
    if "weight_decay" in ranges:
        low, high = ranges["weight_decay"]
        if not low <= wd <= high:
            wd = math.sqrt(low * high)
    configs = []
    for lr in starts:
        values = copy.deepcopy(base)
        values["method"] = "hypergradient"
        values.setdefault("optim", {}).update(lr=lr, weight_decay=wd)
        section = dict(values.get("hypergradient", {}))
        section.update(tune=list(ranges), lr=search.lr)
        for name, (low, high) in ranges.items():
            section[f"{name}_range"] = [low, high]
        values["hypergradient"] = section
        values["seed"] = values.get("seed", cfg.study.seed)
        # each run keeps its epoch of best validation score by the study's metric
        values["select_on"] = (
            "balanced_accuracy" if objective.metric == "val_balanced_accuracy" else "accuracy"
        )
        configs.append(values)
    return configs


def run_starts(cfg: HPOConfig, run_dir: Path, run_one: RunOne) -> dict[str, Any]:
    """Train every start (a finished one, ``summary.json`` present, is read back; an
    unfinished one continues from its checkpoint), then write ``runs.csv``,
    ``trajectories.csv``, ``best.json`` and ``best.yaml``; returns ``best.json``'s content."""
    from slem.train.config import parse_train_config

    metric = cfg.objective.metric if isinstance(cfg.objective, TrainObjective) else ""
    rows, trajectories = [], []
    known = _read_trajectories(run_dir)
    for k, values in enumerate(start_configs(cfg)):
        out = start_dir(run_dir, k)
        summary_file = out / "summary.json"
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
            trajectories += [r for r in known if int(r["start"]) == k]
        else:
            config = parse_train_config(values)
            record = run_one(config, out, (out / "config.yaml").is_file())
            summary = record.summary
            a = record.arrays
            per_epoch = max(int(record.info.get("steps_per_epoch", 1)), 1)
            for i in range(len(a.get("hyper_step", ()))):
                trajectories.append(
                    {
                        "start": k,
                        "start_lr": values["optim"]["lr"],
                        "step": int(a["hyper_step"][i]),
                        "epoch": float(a["hyper_step"][i]) / per_epoch,
                        "lr": float(a["hyper_lr"][i]),
                        "weight_decay": float(a["hyper_weight_decay"][i]),
                        "outer_loss": float(a["hyper_outer_loss"][i]),
                    }
                )
            _write_csv(run_dir / TRAJECTORIES_FILE, trajectories)
        rows.append(_row(k, values, summary, out))
    _write_csv(run_dir / RUNS_FILE, rows)
    _write_csv(run_dir / TRAJECTORIES_FILE, trajectories)
    best = max(rows, key=lambda r: r["val_score"])
    result = {
        "strategy": "hypergradient",
        "study": cfg.study.name,
        "metric": metric,
        "selected_on": "the validation score of each run's best epoch",
        "best": best,
        "runs": rows,
        "best_config": str(run_dir / BEST_CONFIG),
    }
    atomic_write_text(run_dir / BEST_JSON, json.dumps(result, indent=1) + "\n")
    values = copy.deepcopy(start_configs(cfg)[best["start"]])
    head = (
        f"# slem hpo, study '{cfg.study.name}' (strategy hypergradient): the best run, start "
        f"{best['start']} (lr {best['start_lr']:g}),\n# chosen on validation score "
        f"{best['val_score']:.4f}; its test score played no part. Run it again with:\n"
        f"#   slem train {run_dir / BEST_CONFIG} --out runs/{cfg.study.name}-best\n"
    )
    atomic_write_text(run_dir / BEST_CONFIG, head + yaml.safe_dump(values, sort_keys=False))
    return result


def _row(k: int, values: dict[str, Any], summary: dict[str, Any], out: Path) -> dict[str, Any]:
    return {
        "start": k,
        "start_lr": values["optim"]["lr"],
        "start_weight_decay": values["optim"]["weight_decay"],
        "tuned_lr": summary.get("tuned_lr"),
        "tuned_weight_decay": summary.get("tuned_weight_decay"),
        "val_score": summary.get("best_val_score"),
        "selected_on": summary.get("selected_on"),
        "best_epoch": summary.get("best_epoch"),
        "test_accuracy_at_best_val": summary.get("test_accuracy_at_best_val"),
        "seconds": summary.get("seconds"),
        "run_dir": str(out),
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _read_trajectories(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / TRAJECTORIES_FILE
    if not path.is_file():
        return []
    return list(csv.DictReader(path.read_text().splitlines()))


# ---------------------------------------------------------------------- penalty objective

PENALTIES_FILE = "penalties.csv"
MODEL_FILE = "model.json"
TRAJECTORY_FILE = "trajectory.csv"


@dataclass
class PenaltyData:
    """A penalty objective's task and its splits as ``(n, d)`` float64 arrays and labels."""

    task: Any
    train: tuple[Any, Any]
    val: tuple[Any, Any]
    test: tuple[Any, Any]


def penalty_data(cfg: HPOConfig) -> PenaltyData:
    """The task of a penalty objective, checked against its model, as arrays (before a run
    directory is written).

    Raises:
        SlemError: the data cannot be built; logistic on a regression target or ridge on
            class labels.
    """
    import numpy as np

    from slem.automl.config import PenaltyObjective
    from slem.data import build_task

    objective = cfg.objective
    assert isinstance(objective, PenaltyObjective)
    task = build_task(objective.data)
    if (objective.model == "logistic") != task.is_classification:
        kind = "class labels" if task.is_classification else "a real-valued target"
        model = "logistic" if task.is_classification else "ridge"
        raise SlemError(
            f"'{task.name}' has {kind}: set objective.model {model} (or the data's task_type)"
        )

    def arrays(split: str) -> tuple[Any, Any]:
        s = getattr(task, split)
        return s.X.reshape(len(s), -1).astype(np.float64), np.asarray(s.y)

    return PenaltyData(task, arrays("train"), arrays("val"), arrays("test"))


def run_penalty_search(cfg: HPOConfig, run_dir: Path, data: PenaltyData) -> dict[str, Any]:
    """``objective.kind: penalty``: the L2 penalties of a logistic or ridge model on the
    table, tuned on its validation split by implicit hypergradients
    (:func:`slem.automl.penalties.tune_penalties`). Writes ``best.json`` (validation and test
    scores, the search's cost), ``penalties.csv`` (each input feature's penalty),
    ``trajectory.csv`` (every outer step: validation loss, hypergradient norm, the penalties)
    and ``model.json`` (the fitted model: ``x @ coef + intercept``, original feature scale);
    returns ``best.json``'s content.

    ``data``: :func:`penalty_data` of ``cfg``.

    Raises:
        SlemError: what :func:`~slem.automl.penalties.tune_penalties` refuses.
    """
    import numpy as np

    from slem.automl.config import PenaltyObjective
    from slem.automl.penalties import tune_penalties

    objective = cfg.objective
    assert isinstance(objective, PenaltyObjective)
    task = data.task
    (xt, yt), (xv, yv), (xs, ys) = data.train, data.val, data.test
    search = cfg.study.hypergradient
    result = tune_penalties(
        xt,
        yt,
        xv,
        yv,
        model=objective.model,
        groups=objective.groups,
        outer_steps=search.outer_steps,
        lr=search.lr,
        patience=search.patience,
        bounds=objective.penalty_range,
        seed=cfg.study.seed,
        prior=objective.prior,
    )
    test: dict[str, float] = {}
    if objective.model == "logistic":
        proba = result.predict_proba(xs)
        classes = list(result.classes) if result.classes is not None else []
        index = np.asarray([classes.index(v) for v in ys])
        p = np.clip(proba[np.arange(len(ys)), index], 1e-15, 1.0)
        test = {
            "test_log_loss": float(-np.log(p).mean()),
            "test_accuracy": float((result.predict(xs) == ys).mean()),
        }
    else:
        test = {"test_mse": float(((result.predict(xs) - ys) ** 2).mean())}
    names = list(task.encoder.input_names) if task.encoder is not None else []
    names = names or list(task.feature_names)
    width = xt.shape[1]
    if len(names) != width:
        names = [f"x{j}" for j in range(width)]
    per_feature = result.penalties[result.groups]
    _write_csv(
        run_dir / PENALTIES_FILE,
        [
            {"feature": n, "group": int(g), "penalty": float(v)}
            for n, g, v in zip(names, result.groups, per_feature, strict=True)
        ],
    )
    _write_csv(
        run_dir / TRAJECTORY_FILE,
        [
            {
                "step": r["step"],
                "val_loss": r["val_loss"],
                "hypergrad_norm": r.get("hypergrad_norm"),
                "seconds": r.get("seconds"),
                **{f"penalty_{g}": float(v) for g, v in enumerate(r["penalties"])},
            }
            for r in result.trajectory
        ],
    )
    fitted: dict[str, Any] = {
        "model": objective.model,
        "features": names,
        "classes": None
        if result.classes is None
        else [str(task.class_names[int(c)]) for c in result.classes],
        "coef": result.coef.tolist(),
        "intercept": result.intercept.tolist(),
        "penalties": per_feature.tolist(),
        "logits": "x @ coef + intercept on the task's inputs (after slem's preprocessing)",
    }
    atomic_write_text(run_dir / MODEL_FILE, json.dumps(fitted) + "\n")
    # what slem predict reads (slem.automl.outputs.load_model): the model as a scikit-learn
    # estimator and the task's preprocessing of new rows
    from slem.automl.cash import save_pipeline
    from slem.data.preprocess import PREPROCESSING_FILE, Preprocessing

    save_pipeline(result.to_sklearn(), run_dir / "pipeline.skops")
    atomic_write_text(run_dir / PREPROCESSING_FILE, Preprocessing.of(task).to_text())
    summary = {
        "strategy": "hypergradient",
        "study": cfg.study.name,
        "objective": "penalty",
        "model": objective.model,
        "groups": objective.groups,
        "metric": "val_log_loss" if objective.model == "logistic" else "val_mse",
        "val_loss": result.val_loss,
        "initial_val_loss": result.initial_val_loss,
        **test,
        "seconds": result.seconds,
        "outer_steps": len(result.trajectory),
        "best_step": result.best_step,
        "stopped": result.stopped,
        "n_penalties": len(result.penalties),
        "selected_on": "validation loss (the test scores played no part)",
    }
    atomic_write_text(run_dir / BEST_JSON, json.dumps(summary, indent=1) + "\n")
    return summary
