"""Running a study on Optuna: sampler, pruner and storage from the config, a worker loop that
stops at the study's total trial count, and failures that do not stop the study.

Storage is embedded by default (SQLite in the run directory). With a PostgreSQL URL several
workers, on this machine or others, share one study; heartbeats mark the trial of a worker
that died as failed, and the study goes on.

A study of N trials ends with exactly N *finished* (complete or pruned) trials, whatever the
number of workers, machines, crashes and restarts: failed trials (an error, or a worker that
died) are replaced, every trial's sampler seed is derived from the study's seed and the
trial's number (workers never share a random stream), and a configuration already finished
or running in the study is skipped, not evaluated again. A space (or grid) with fewer
distinct configurations than N ends with all of them, each once.

This module holds the worker loop (:func:`work`, :func:`run_trial`); the rest lives beside it
and is re-exported here: samplers, pruner and :func:`create_study` in
:mod:`slem.automl.study_setup`, storage and locking in :mod:`slem.automl.study_storage`, and
the tally of trials in :mod:`slem.automl.study_tally`.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from slem.automl.space import SearchSpace
from slem.automl.study_setup import PerTrialSeed as PerTrialSeed
from slem.automl.study_setup import UnseenSampler as UnseenSampler
from slem.automl.study_setup import config_key as config_key
from slem.automl.study_setup import create_study as create_study
from slem.automl.study_setup import derived_seed as derived_seed
from slem.automl.study_setup import make_pruner as make_pruner
from slem.automl.study_setup import make_sampler as make_sampler
from slem.automl.study_storage import PSYCOPG as PSYCOPG
from slem.automl.study_storage import STUDY_DB as STUDY_DB
from slem.automl.study_storage import ask_lock as ask_lock
from slem.automl.study_storage import default_storage as default_storage
from slem.automl.study_storage import open_storage as open_storage
from slem.automl.study_storage import redact_url as redact_url
from slem.automl.study_storage import sqlite_file as sqlite_file
from slem.automl.study_storage import storage_problem as storage_problem
from slem.automl.study_tally import ERROR as ERROR
from slem.automl.study_tally import FINISHED as FINISHED
from slem.automl.study_tally import LIVE as LIVE
from slem.automl.study_tally import SKIPPED as SKIPPED
from slem.automl.study_tally import SOURCE as SOURCE
from slem.automl.study_tally import WORKER as WORKER
from slem.automl.study_tally import Tally as Tally
from slem.automl.study_tally import best_rows as best_rows
from slem.automl.study_tally import counted as counted
from slem.automl.study_tally import tally as tally
from slem.errors import SlemError

# the features used here (TPE's group, heartbeats) are marked experimental in Optuna
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=".*independent sampl.*", module="optuna")

FINITE_LIMIT = 100_000  # enumerate finite spaces up to this many configurations
MAX_SKIPS_IN_ROW = 50


class StudyFailed(SlemError):
    """The study cannot reach its trials: as many trials failed as were planned."""


@runtime_checkable
class SpaceObjective(Protocol):
    """An objective in two steps, so the worker can check a configuration before it is
    evaluated: ``space.suggest(trial)``, then ``run(trial, values)``."""

    space: SearchSpace

    def run(self, trial: Any, values: dict[str, Any]) -> float: ...


def planned(study: optuna.Study, objective: Any, total: int) -> int:
    """The number of finished trials a study of ``total`` aims at: ``total``, or fewer when
    the space (or the grid) holds fewer distinct configurations, none of them tried twice."""
    if isinstance(study.sampler, UnseenSampler):
        return min(total, len(study.sampler.configs))
    if isinstance(objective, SpaceObjective):
        size = objective.space.finite_size(FINITE_LIMIT)
        if size is not None:
            return min(total, size)
    return total


def release_stale(study: optuna.Study) -> None:
    """Fail the running trials of workers that died: no heartbeat within the grace period
    (Optuna's ``fail_stale_trials``), or, killed before their first heartbeat, no param set
    long after they started."""
    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    grace = getattr(storage, "grace_period", None) or 60
    cutoff = max(60.0, 2.0 * grace)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start
        if not t.params and started is not None and (now - started).total_seconds() > cutoff:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _first_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:500]


def _duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of another finished or running trial with the same configuration."""
    key = config_key(trial.params)
    for t in study.get_trials(deepcopy=False, states=LIVE):
        if t.number != trial.number and t.params and config_key(t.params) == key:
            return t.number
    return None


def _ahead(study: optuna.Study, number: int) -> int:
    """Trials numbered below ``number`` that are finished, running or queued. Trials are
    numbered as they are created, so of the workers that create trials at the same moment
    the lowest numbers claim the study's last places, and the others skip theirs: never more
    than the total run, and never all of them skip."""
    states = (*LIVE, TrialState.WAITING)
    return sum(t.number < number for t in study.get_trials(deepcopy=False, states=states))


def _skip(study: optuna.Study, trial: optuna.Trial, why: str) -> str:
    trial.set_user_attr(SKIPPED, why)
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(trial, state=TrialState.FAIL)
    return "duplicate" if why.startswith("duplicate") else "surplus"


def run_trial(
    study: optuna.Study,
    objective: Any,
    target: int,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> str:
    """Ask for one trial and run it, unless ``target`` finished, running or queued trials are
    numbered below it (then the trial is skipped as surplus, :func:`_ahead`) or, for a
    :class:`SpaceObjective`, another finished or running trial holds its configuration
    (skipped as a duplicate; of two workers that draw the same configuration at once, at
    least one skips, so no configuration is evaluated twice). A raised error is recorded on
    the trial (``error`` and ``traceback`` user attrs) and fails it. Returns ``"done"``,
    ``"duplicate"`` or ``"surplus"``."""
    with warnings.catch_warnings(), ask_lock(study):
        # "heartbeat is supposed to be used with optimize": we do
        warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
        trial = study.ask()
    value: float | None = None
    state = TrialState.COMPLETE
    with get_heartbeat_thread(trial._trial_id, study._storage):
        trial.set_user_attr(WORKER, worker_name())
        if SOURCE not in trial.user_attrs:  # not enqueued with a source (enqueue_starts)
            trial.set_user_attr(SOURCE, "sampler")
        if _ahead(study, trial.number) >= target:
            return _skip(study, trial, f"surplus: the study already has its {target} trials")
        try:
            if isinstance(objective, SpaceObjective):
                values = objective.space.suggest(trial)
                twin = _duplicate_of(study, trial)
                if twin is not None:
                    return _skip(study, trial, f"duplicate of trial {twin}")
                value = objective.run(trial, values)
            else:
                value = objective(trial)
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"the objective returned {value!r}, not a finite number")
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as exc:
            state = TrialState.FAIL
            trial.set_user_attr(ERROR, _first_line(exc))
            trial.set_user_attr("traceback", traceback.format_exc()[-2000:])
        except KeyboardInterrupt:
            trial.set_user_attr(ERROR, "interrupted")
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study.tell(trial, state=TrialState.FAIL)
            raise
    try:
        if state == TrialState.COMPLETE:
            frozen = study.tell(trial, float(value))  # type: ignore[arg-type]
        else:
            frozen = study.tell(trial, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        return "done"  # another worker failed it meanwhile (our heartbeat lapsed)
    for callback in callbacks:
        callback(study, frozen)
    return "done"


def _fallback_sampler(objective: Any, seed: int) -> optuna.samplers.BaseSampler:
    """For the trial after a duplicate: an unseen configuration of a finite space, else a
    random one."""
    if isinstance(objective, SpaceObjective):
        configs = objective.space.configurations(lambda p: p.values(FINITE_LIMIT), FINITE_LIMIT)
        if configs:
            return UnseenSampler(configs, seed)
    return PerTrialSeed(lambda s: optuna.samplers.RandomSampler(seed=s), seed + 1)


def work(
    study: optuna.Study,
    objective: Callable[[Any], float] | SpaceObjective,
    total: int,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    should_stop: Callable[[], bool] | None = None,
    poll: float = 0.5,
) -> int:
    """One worker: run trials until the study holds ``planned(total)`` finished (complete or
    pruned) trials over all its workers, whatever their number. Stale trials of dead workers
    are failed (heartbeats) and replaced; a failed trial is replaced; while the remaining
    trials are running in other workers this one waits (``poll`` seconds between looks) in
    case one of them fails. Stops early at ``timeout`` seconds or when ``should_stop()``.
    Returns the study's finished trials.

    Raises:
        StudyFailed: ``total`` trials have failed (a broken objective, not bad luck).
    """
    target = planned(study, objective, total)
    beats = is_heartbeat_enabled(study._storage)
    deadline = None if timeout is None else time.monotonic() + timeout
    sampler = study.sampler
    seed = int(getattr(sampler, "seed", 0) or 0)
    next_sampler: optuna.samplers.BaseSampler | None = None
    skips = 0
    while True:
        release_stale(study)
        n = tally(study)
        if n.finished >= target:
            return n.finished
        if n.failed >= total:
            last = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            errors = [t.user_attrs[ERROR] for t in last if ERROR in t.user_attrs]
            raise StudyFailed(
                f"study '{study.study_name}': {n.failed} trials failed (the last: "
                f"{errors[-1] if errors else 'unknown'}); fix the cause (trials.csv has every "
                "error) and continue with --resume"
            )
        if (deadline is not None and time.monotonic() >= deadline) or (
            should_stop is not None and should_stop()
        ):
            return n.finished
        if n.finished + n.running >= target:
            if not beats:  # no heartbeats: a dead worker's trial cannot be told from a live one
                return n.finished
            time.sleep(poll)
            continue
        study.sampler = next_sampler or sampler
        try:
            outcome = run_trial(study, objective, target, callbacks)
        finally:
            study.sampler = sampler
        if outcome == "done":
            skips, next_sampler = 0, None
            continue
        skips += 1
        if skips > MAX_SKIPS_IN_ROW:
            raise SlemError(
                f"study '{study.study_name}': {skips} proposals in a row were already in the "
                "study; use another study.sampler or a larger search space"
            )
        if outcome == "duplicate":
            next_sampler = _fallback_sampler(objective, seed + skips)
        else:
            time.sleep(random.uniform(0.0, poll))  # another worker took the last trial
