"""Building the meta-dataset offline: a CASH study on every meta-training table, then every
task's best configurations scored on every other task (the cross-task matrix the zero-shot
predictor and the portfolio learn from).

    slem meta-dataset --trials 30 --out meta_dataset.json

The shipped file (``slem/automl/data/meta_dataset.json``) was made by that command with the
defaults (then copied into the source tree; the command never writes into the installed
package); it takes about an hour on 2 CPU cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from slem.automl.cash import cash_space
from slem.automl.config import CashObjective, StudyConfig
from slem.automl.meta import MetaStore
from slem.automl.objectives import CashTrial
from slem.automl.study import make_sampler, work
from slem.automl.tables import META_TRAIN_TABLES, TableSpec, data_config
from slem.errors import SlemError

SHIPPED = Path(__file__).resolve().parent / "data" / "meta_dataset.json"


def cash_trial(spec: TableSpec, seed: int = 0) -> CashTrial:
    """The CASH objective on one table (balanced accuracy on its validation split)."""
    cfg = CashObjective.model_validate({"kind": "cash", "data": data_config(spec, seed)})
    return CashTrial(cfg, seed=seed)


def task_meta_features(trial: CashTrial) -> dict[str, float]:
    from slem.data.meta_features import meta_features

    return meta_features(trial.task)


def run_cash(trial: CashTrial, n_trials: int, seed: int = 0, sampler: str = "tpe") -> optuna.Study:
    """A cold-start CASH study in memory."""
    cfg = StudyConfig.model_validate({"sampler": sampler, "seed": seed})
    study = optuna.create_study(direction="maximize", sampler=make_sampler(cfg, trial.space))
    work(study, trial, n_trials)
    return study


def complete_trials(study: optuna.Study) -> list[dict[str, Any]]:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [{"params": t.params, "value": float(t.value)} for t in done if t.value is not None]


def score_config(trial: CashTrial, config: dict[str, Any]) -> float:
    """One configuration's validation score on a task (NaN when it cannot be fitted)."""
    try:
        return trial.evaluate(trial.fit(config), "val")
    except Exception:  # a configuration from another task may not fit this one
        return float("nan")


def build_meta_dataset(
    tables: Sequence[TableSpec] = META_TRAIN_TABLES,
    n_trials: int = 30,
    per_task: int = 2,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> MetaStore:
    store = MetaStore(
        info={
            "trials_per_task": n_trials,
            "candidates_per_task": per_task,
            "seed": seed,
            "metric": "balanced_accuracy (validation split)",
        }
    )
    objectives: dict[str, CashTrial] = {}
    for spec in tables:
        start = time.perf_counter()
        trial = cash_trial(spec, seed)
        objectives[spec.name] = trial
        study = run_cash(trial, n_trials, seed)
        store.add(spec.name, task_meta_features(trial), complete_trials(study))
        log(f"{spec.name}: best {study.best_value:.4f} ({time.perf_counter() - start:.0f} s)")
    store.candidates = store.pool(per_task)
    space = cash_space()
    for name, trial in objectives.items():
        start = time.perf_counter()
        store.scores[name] = [score_config(trial, space.active_config(c)) for c in store.candidates]
        valid = np.array(store.scores[name])
        log(
            f"{name}: {len(valid)} candidates scored, best {np.nanmax(valid):.4f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return store


def check_meta_dataset_out(out: Path) -> None:
    """``slem meta-dataset --out``: a file path outside the installed package.

    Raises:
        SlemError: ``out`` is a directory, or inside the installed ``slem`` package.
    """
    if out.is_dir():
        raise SlemError(f"--out {out} is a directory; give a file path such as {out}/md.json")
    package = SHIPPED.parents[2].resolve()  # /slem
    target = out.resolve()
    if target == package or package in target.parents:
        raise SlemError(
            f"--out {out} is inside the installed slem package; write the meta-dataset "
            "elsewhere (e.g. ./meta_dataset.json) and set study.meta_dataset to it"
        )


def shipped_store() -> MetaStore:
    return MetaStore.load(SHIPPED)
