"""A study on disk: ``hpo.yaml`` (the resolved config with provenance), the study's storage
(``study.db``, SQLite, unless a shared storage URL is given), ``trials.csv``, ``best.json``
(the best configuration, its validation score, and its test score, which played no part in
choosing it) and the plots in ``plots/``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from slem.automl.config import HPOConfig, parse_hpo_config
from slem.automl.objectives import CashTrial, make_objective
from slem.automl.study import best_rows, create_study, default_storage, open_storage, work
from slem.errors import SlemError

CONFIG_FILE = "hpo.yaml"
Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def budgets_of(objective: Any) -> list[int]:
    if isinstance(objective, CashTrial):
        return objective.budgets
    return list(range(1, objective.epochs + 1))


def read_hpo_config(run_dir: Path) -> HPOConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise SlemError(f"'{run_dir}' holds no study ({CONFIG_FILE} missing); nothing to resume")
    values = yaml.safe_load(path.read_text())
    values.pop("provenance", None)
    return parse_hpo_config(values)


def prepare(config: HPOConfig, run_dir: Path, storage: str | None, resume: bool) -> str:
    """Create or check the run directory; returns the storage URL."""
    from slem.train.run import provenance

    url = storage or default_storage(run_dir)
    fresh = not (run_dir / CONFIG_FILE).exists()
    if not fresh and not resume and storage is None:
        raise SlemError(
            f"'{run_dir}' already holds a study; continue it with --resume or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        doc = {**config.model_dump(mode="json"), "provenance": provenance()}
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(doc, sort_keys=False))
    return url


def run_worker(
    config: HPOConfig, url: str, callbacks: Sequence[Callback] = (), trials: int | None = None
) -> optuna.Study:
    """One worker on the study: builds the objective, joins (or creates) the study and runs
    trials until the study's total is reached."""
    study_cfg = config.study
    objective = make_objective(config.objective, study_cfg.reduction_factor, study_cfg.seed)
    study = joined(config, url, objective)
    if isinstance(objective, CashTrial) and not study.trials:
        for values in meta_learned_starts(config, objective):
            study.enqueue_trial(values, skip_if_exists=True)
    work(study, objective, trials or study_cfg.trials, study_cfg.timeout, callbacks)
    return study


def joined(config: HPOConfig, url: str, objective: Any, attempts: int = 5) -> optuna.Study:
    """Create or join the study. Workers that start together on a fresh database race to
    create its tables and the study; the losers retry and join."""
    for attempt in range(attempts):
        try:
            storage = open_storage(url, config.study)
            return create_study(config, storage, objective.space, budgets_of(objective))
        except (SlemError, optuna.exceptions.DuplicatedStudyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def prepare_shared(config: HPOConfig, url: str) -> None:
    """Create the database tables and the study before worker processes start."""
    storage = open_storage(url, config.study)
    optuna.create_study(
        study_name=config.study.name,
        storage=storage,
        direction=config.direction,
        load_if_exists=True,
    )


def meta_learned_starts(config: HPOConfig, objective: CashTrial) -> list[dict[str, Any]]:
    """Zero-shot proposals, then the best configurations of the nearest earlier tasks."""
    study_cfg = config.study
    if not (study_cfg.warm_start or study_cfg.zero_shot):
        return []
    from slem.automl.build import SHIPPED
    from slem.automl.meta import MetaStore, ZeroShot, warm_start_configs
    from slem.data.meta_features import meta_features

    store = MetaStore.load(study_cfg.meta_dataset or SHIPPED)
    mf = meta_features(objective.task)
    exclude = [objective.task.name]  # never start from the task's own earlier study
    starts: list[dict[str, Any]] = []
    if study_cfg.zero_shot:
        model = ZeroShot(study_cfg.seed).fit(store, exclude)
        starts += model.rank(mf)[: study_cfg.zero_shot]
    if study_cfg.warm_start:
        starts += warm_start_configs(store, mf, study_cfg.warm_start, exclude=exclude)
    out: list[dict[str, Any]] = []
    for c in starts:
        c = objective.space.active_config(c)
        if c not in out:
            out.append(c)
    return out


def spawn_workers(
    config_path: Path, run_dir: Path, url: str, n: int, trials: int | None
) -> list[int]:
    """``n`` worker processes of ``slem hpo --worker`` on the same study; returns their exit
    codes once all have finished."""
    cmd = [
        sys.executable,
        "-m",
        "slem.cli.app",
        "hpo",
        str(config_path),
        "--worker",
        "--storage",
        url,
        "--out",
        str(run_dir),
        "--quiet",
    ]
    if trials is not None:
        cmd += ["--trials", str(trials)]
    procs = [subprocess.Popen(cmd) for _ in range(n)]
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise


def write_results(
    study: optuna.Study, run_dir: Path, metric_attr: str | None = None
) -> dict[str, Any]:
    """``trials.csv``, ``best.json`` and the plots; returns the best-trial summary."""
    from slem.report.hpo_plots import write_study_plots

    study.trials_dataframe().to_csv(run_dir / "trials.csv", index=False)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    best = best_rows(study, 1)
    summary: dict[str, Any] = {
        "study": study.study_name,
        "direction": study.direction.name.lower(),
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
    }
    if best:
        t = best[0]
        summary.update(
            best_trial=t.number,
            best_value=t.value,
            best_params=t.params,
            best_test={k: v for k, v in t.user_attrs.items() if k.startswith("test_")},
        )
    summary["plots"] = [str(p) for p in write_study_plots(study, run_dir / "plots")]
    (run_dir / "best.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def load_study(config: HPOConfig, url: str) -> optuna.Study:
    return optuna.load_study(study_name=config.study.name, storage=open_storage(url, config.study))


def wait_for_study(config: HPOConfig, url: str, seconds: float = 30.0) -> optuna.Study:
    """The study once a worker has created it (workers may still be starting)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return load_study(config, url)
        except KeyError:
            if time.monotonic() > deadline:
                raise SlemError(f"no worker created study '{config.study.name}'") from None
            time.sleep(0.5)
