"""An Optuna pruner that extrapolates each trial's learning curve (:class:`CurvePruner`)."""

from __future__ import annotations

import math
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from slem.automl.curves import Direction, Extrapolation
from slem.errors import SlemError


class Extrapolator(Protocol):
    """What :class:`CurvePruner` asks: the final value of a partial curve, with an interval
    whose bounds are one-sided ``confidence`` quantiles (:class:`~slem.automl.curve_model.
    CurveModel`, :class:`~slem.automl.curve_model.ParametricExtrapolator`)."""

    def predict(
        self,
        steps: Any,
        values: Any,
        horizon: float,
        direction: Direction = "minimize",
        confidence: float = 0.95,
    ) -> Extrapolation: ...


class CurvePruner(optuna.pruners.BasePruner):
    """Prune a trial when its learning curve, extrapolated to the end of the budget, is
    unlikely to beat the best finished trial (Domhan et al. 2015, IJCAI, with the
    meta-learned extrapolator of Adriaensen et al. 2023 in place of their MCMC ensemble).

    At every report the trial's curve so far (its intermediate values by step: epochs, data
    percentages; any unit and scale) is extrapolated to ``horizon``; the trial is pruned when
    the optimistic bound (the ``confidence`` quantile: the upper one when maximizing, the
    lower one when minimizing) is worse than the best value of the study's completed trials.
    A non-finite last value (a diverged run) is pruned at once.

    Args:
        horizon: the step whose value the objective returns (the last epoch, 100 percent).
        extrapolator: ``None`` (the shipped meta-learned model,
            :func:`~slem.automl.curve_model.load_curve_model`), ``"parametric"`` (the
            parametric ensemble), or an object with ``predict`` (:class:`Extrapolator`).
        n_startup_trials: prune nothing until this many trials have completed.
        n_warmup_steps: prune nothing before a trial has reported this many values.
        confidence: in (0.5, 1); higher prunes less.

    Raises:
        SlemError: a horizon under 1, a confidence outside (0.5, 1), or negative counts.
    """

    def __init__(
        self,
        horizon: float,
        extrapolator: Extrapolator | str | None = None,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 3,
        confidence: float = 0.95,
    ) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int | float) or not horizon >= 1:
            raise SlemError(f"the curve pruner's horizon must be at least 1 (got {horizon})")
        if not 0.5 < confidence < 1:
            raise SlemError(f"the curve pruner's confidence must be in (0.5, 1) (got {confidence})")
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise SlemError("the curve pruner's n_startup_trials and n_warmup_steps must be >= 0")
        if extrapolator is None or isinstance(extrapolator, str):
            from slem.automl.curve_model import ParametricExtrapolator, load_curve_model

            if extrapolator not in (None, "parametric", "meta"):
                raise SlemError(
                    f"unknown extrapolator {extrapolator!r}: use 'meta' (the shipped model) "
                    "or 'parametric'"
                )
            extrapolator = (
                ParametricExtrapolator() if extrapolator == "parametric" else load_curve_model()
            )
        self.horizon = float(horizon)
        self.extrapolator: Extrapolator = extrapolator
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.confidence = confidence

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        done = [
            t.value
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)
        ]
        if len(done) < max(self.n_startup_trials, 1):
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = max(done) if maximize else min(done)
        items = sorted(trial.intermediate_values.items())
        if not math.isfinite(items[-1][1]):
            return True
        items = [(s, v) for s, v in items if math.isfinite(v)]
        if len(items) < max(self.n_warmup_steps, 1):
            return False
        shift = 1 - items[0][0] if items[0][0] < 1 else 0  # steps counted from 0
        horizon = self.horizon + shift
        steps = [s + shift for s, _ in items]
        if steps[-1] >= horizon:
            return False
        pred = self.extrapolator.predict(
            steps,
            [v for _, v in items],
            horizon,
            "maximize" if maximize else "minimize",
            self.confidence,
        )
        return pred.upper < best if maximize else pred.lower > best
