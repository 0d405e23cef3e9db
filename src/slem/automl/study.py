"""Running a study on Optuna: sampler, pruner and storage from the config, a worker loop that
stops at the study's total trial count, and failures that do not stop the study.

Storage is embedded by default (SQLite in the run directory). With a PostgreSQL URL several
workers, on this machine or others, share one study; heartbeats mark the trial of a worker
that died as failed, and the study goes on.
"""

from __future__ import annotations

import importlib
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from slem.automl.config import HPOConfig, StudyConfig
from slem.automl.space import SearchSpace
from slem.errors import SlemError

STUDY_DB = "study.db"
PSYCOPG = ("postgresql+psycopg://", "postgresql+psycopg2://")
# the features used here (TPE's group, heartbeats) are marked experimental in Optuna
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=".*independent sampl.*", module="optuna")


def make_sampler(cfg: StudyConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded. TPE models the conditional space jointly (``group``)."""
    s = cfg.sampler
    if s == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if s == "grid":
        return optuna.samplers.GridSampler(space.grid(cfg.grid_points), seed=cfg.seed)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=cfg.seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, group=True)


def make_pruner(cfg: StudyConfig, budgets: Sequence[int]) -> optuna.pruners.BasePruner:
    """The configured pruner over the objective's budgets (epochs or data percentages)."""
    name = cfg.pruner_name
    if name == "none" or len(budgets) < 2:
        return optuna.pruners.NopPruner()
    low = max(cfg.min_resource, budgets[0])
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=low)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=low, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=low, max_resource=budgets[-1], reduction_factor=cfg.reduction_factor
    )


def open_storage(url: str, cfg: StudyConfig) -> optuna.storages.BaseStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL) with heartbeats, or a journal file
    (``journal:PATH``); an unreachable database is a one-line error."""
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    try:
        target = _with_driver(url)
        if target.startswith(PSYCOPG) and "connect_timeout=" not in target:
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # seconds, not minutes
        return optuna.storages.RDBStorage(
            target,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=cfg.heartbeat,
            grace_period=cfg.grace_period or 3 * cfg.heartbeat,
        )
    except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use it"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SlemError(f"cannot open the study storage '{_redact(url)}': {first}") from None


def _with_driver(url: str) -> str:
    """A PostgreSQL URL names the driver that is installed: SQLAlchemy 2.1 reads
    ``postgresql://`` as psycopg (3), 2.0 as psycopg2."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    for driver in ("psycopg", "psycopg2"):
        try:
            importlib.import_module(driver)
        except ImportError:
            continue
        return f"postgresql+{driver}://{rest}"
    raise SlemError("a PostgreSQL storage needs the driver: pip install 'slem[postgres]'")


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def create_study(
    config: HPOConfig,
    storage: optuna.storages.BaseStorage,
    space: SearchSpace,
    budgets: Sequence[int],
) -> optuna.Study:
    """Create the study, or join it when the storage already holds one of that name."""
    return optuna.create_study(
        study_name=config.study.name,
        storage=storage,
        sampler=make_sampler(config.study, space),
        pruner=make_pruner(config.study, budgets),
        direction=config.direction,
        load_if_exists=True,
    )


def recording_failures(objective: Callable[[Any], float]) -> Callable[[Any], float]:
    """The objective, recording a raised exception's message on the trial before Optuna marks
    it failed (the study goes on)."""

    def run(trial: Any) -> float:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            trial.set_user_attr("error", message)
            trial.set_user_attr("traceback", traceback.format_exc()[-2000:])
            raise

    return run


def counted(study: optuna.Study) -> int:
    """Trials that count toward the study's total: all but those still waiting in the queue."""
    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.RUNNING,
    )
    return len(study.get_trials(deepcopy=False, states=states))


def work(
    study: optuna.Study,
    objective: Callable[[Any], float],
    total: int,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
) -> None:
    """One worker: run trials until the study holds ``total`` of them (over all workers)."""
    remaining = total - counted(study)
    if remaining <= 0:
        return
    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.RUNNING,
    )
    study.optimize(
        recording_failures(objective),
        n_trials=remaining,
        timeout=timeout,
        catch=(Exception,),
        callbacks=[optuna.study.MaxTrialsCallback(total, states=states), *callbacks],
        gc_after_trial=False,
    )


def best_rows(study: optuna.Study, k: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best complete trials, best first."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: sign * float(t.value or 0.0))[:k]


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STUDY_DB).resolve()}"
