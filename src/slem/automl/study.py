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
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import math
import os
import random
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import optuna
from filelock import FileLock
from optuna.distributions import BaseDistribution
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from slem.automl.config import HPOConfig, StudyConfig
from slem.automl.space import SearchSpace
from slem.errors import SlemError

STUDY_DB = "study.db"
PSYCOPG = ("postgresql+psycopg://", "postgresql+psycopg2://")
# the features used here (TPE's group, heartbeats) are marked experimental in Optuna
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message=".*independent sampl.*", module="optuna")


def derived_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a study seeded ``seed``: distinct per trial, so
    workers that share a study never propose the same configuration from the same seed."""
    return int(np.random.SeedSequence([seed % 2**32, number]).generate_state(1)[0])


def _base_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


class PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler made afresh for every trial, seeded from the study's seed and the trial's
    number (:func:`derived_seed`). Optuna's samplers keep their model in the study, not in
    the sampler object, so this changes nothing but the random stream: trial ``n`` draws the
    same values whichever worker, process or machine runs it."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self.make = make
        self.seed = seed
        self.inner = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner = self.make(derived_seed(self.seed, trial.number))
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)


def config_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable form of a configuration (its params, sorted by name)."""
    return tuple(sorted(params.items()))


class UnseenSampler(optuna.samplers.BaseSampler):
    """Picks, for every trial, one of ``configs`` that no finished or running trial of the
    study holds (at random, seeded per trial), and suggests exactly its values; once every
    configuration is taken it picks among all. Used for the grid (the distinct active
    configurations of a conditional space, :meth:`SearchSpace.grid_configurations`) and to
    get past a sampler that keeps proposing configurations the study already holds."""

    def __init__(self, configs: Sequence[Mapping[str, Any]], seed: int) -> None:
        if not configs:
            raise SlemError("the search space has no configuration to try")
        self.configs = [dict(c) for c in configs]
        self.seed = seed
        self.chosen: dict[int, dict[str, Any]] = {}
        self.fallback = optuna.samplers.RandomSampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        taken = {config_key(t.params) for t in study.get_trials(deepcopy=False, states=LIVE)}
        unseen = [c for c in self.configs if config_key(c) not in taken] or self.configs
        rng = np.random.default_rng(derived_seed(self.seed, trial.number))
        self.chosen = {trial.number: unseen[int(rng.integers(len(unseen)))]}

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        config = self.chosen.get(trial.number, {})
        if param_name in config:
            return config[param_name]
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)


def make_sampler(cfg: StudyConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded per trial from ``cfg.seed`` (:class:`PerTrialSeed`).
    TPE models the conditional space jointly (``group``); ``bohb`` is TPE (its pruner is
    Hyperband); the grid is the distinct active configurations of the space, each tried once
    (:class:`UnseenSampler`).

    Raises:
        SlemError: a grid of more than 100,000 points.
    """
    if cfg.sampler == "grid":
        return UnseenSampler(space.grid_configurations(cfg.grid_points), cfg.seed)
    name = cfg.sampler
    return PerTrialSeed(lambda seed: _base_sampler(name, seed), cfg.seed)


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
    except SlemError:
        raise
    except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use it"
        raise SlemError(storage_problem(url, exc)) from None


def storage_problem(url: str, exc: BaseException) -> str:
    """One line on a storage that cannot be used: for an SQLite file, that it is damaged
    and what to do."""
    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return (
            f"the study database {path} cannot be used ({first}): it is damaged or not an "
            "SQLite file; restore it from a copy, or start the study again with another --out"
        )
    return f"cannot open the study storage '{redact_url(url)}': {first}"


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


def redact_url(url: str) -> str:
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


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
ERROR = "error"  # user attr of a trial whose objective raised (or returned no number)
SKIPPED = "skipped"  # user attr of a trial that was never evaluated (duplicate, surplus)
WORKER = "worker"  # user attr: host:pid of the process that ran the trial
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


@dataclass(frozen=True)
class Tally:
    """A study's trials by what became of them. ``finished`` (complete or pruned) is what
    counts toward the study's total; ``failed`` raised an error (``error`` user attr),
    ``lost`` belonged to a worker that stopped sending heartbeats, ``skipped`` were never
    evaluated (a duplicate configuration, or a trial beyond the total)."""

    complete: int
    pruned: int
    running: int
    waiting: int
    failed: int
    lost: int
    skipped: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def tally(study: optuna.Study) -> Tally:
    counts = dict.fromkeys(("complete", "pruned", "running", "waiting"), 0)
    failed = lost = skipped = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            if SKIPPED in t.user_attrs:
                skipped += 1
            elif ERROR in t.user_attrs:
                failed += 1
            else:
                lost += 1
        else:
            counts[t.state.name.lower()] += 1
    return Tally(failed=failed, lost=lost, skipped=skipped, **counts)


def counted(study: optuna.Study) -> int:
    """Trials that count toward the study's total: the finished ones (complete or pruned).
    Failed trials are replaced, running ones may still fail."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


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


def sqlite_file(study: optuna.Study) -> Path | None:
    """The database file of a study stored in SQLite (None for any other storage)."""
    storage = study._storage
    url = getattr(getattr(storage, "_backend", storage), "url", None)
    if isinstance(url, str) and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///") :].split("?", 1)[0])
    return None


@contextlib.contextmanager
def ask_lock(study: optuna.Study) -> Iterator[None]:
    """Serialize ``study.ask()`` between the processes of an SQLite study. Optuna pops an
    enqueued (WAITING) trial with ``SELECT ... FOR UPDATE``, which SQLite ignores: two workers
    asking at the same moment could both receive the same enqueued trial and run it twice.
    SQLite studies are local to one machine, so a file lock next to the database makes the
    pop atomic; server databases (PostgreSQL) lock the row themselves."""
    path = sqlite_file(study)
    if path is None:
        yield
        return
    with FileLock(f"{path}.ask.lock"):
        yield


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


def best_rows(study: optuna.Study, k: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best complete trials, best first."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: sign * float(t.value or 0.0))[:k]


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STUDY_DB).resolve()}"
