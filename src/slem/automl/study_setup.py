"""How a study is set up: its sampler (seeded per trial, :class:`PerTrialSeed`; the grid and
the fallback after a duplicate, :class:`UnseenSampler`), its pruner, and :func:`create_study`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from slem.automl.config import HPOConfig, StudyConfig
from slem.automl.space import SearchSpace
from slem.automl.study_tally import LIVE
from slem.errors import SlemError


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
    """The configured pruner over the objective's budgets (epochs or data percentages);
    ``curve`` extrapolates each trial's curve to the last budget with the shipped
    meta-learned model (:class:`slem.automl.curve_pruner.CurvePruner`)."""
    name = cfg.pruner_name
    if name == "none" or len(budgets) < 2:
        return optuna.pruners.NopPruner()
    low = max(cfg.min_resource, budgets[0])
    if name == "curve":
        from slem.automl.curve_pruner import CurvePruner

        warmup = max(1, min(3, len(budgets) - 1), sum(b < low for b in budgets) + 1)
        return CurvePruner(budgets[-1], n_startup_trials=5, n_warmup_steps=warmup)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=low)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=low, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=low, max_resource=budgets[-1], reduction_factor=cfg.reduction_factor
    )


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
