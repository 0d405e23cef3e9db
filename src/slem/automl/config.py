"""The config of one HPO study (``slem hpo CONFIG.yaml``), as pydantic models.

``study`` says how to search (sampler, pruner, trials, storage); ``objective`` says what a
trial is: a CASH pipeline fitted on a table (``kind: cash``) or a ``slem train`` run whose
config keys come from the search space (``kind: train``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slem.data.config import DataConfig
from slem.errors import SlemError, validation_message

Sampler = Literal["random", "grid", "tpe", "gp", "cmaes", "bohb"]
Pruner = Literal["none", "median", "sha", "hyperband", "curve"]  # curve: slem.automl.curve_pruner


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GradientSearch(_Strict):
    """``study.strategy: hypergradient``: how the hyperparameters follow hypergradients."""

    starts: list[float] = Field(
        default_factory=lambda: [0.003, 0.03, 0.3],
        description="train objective: the learning rates to start from, one run each "
        "(method hypergradient); the run of best validation score is the result",
    )
    lr: float = Field(
        0.3, gt=0, description="Adam step on the log-hyperparameters (natural-log units)"
    )
    outer_steps: int = Field(
        25, ge=1, description="penalty objective: hypergradient steps on the penalties"
    )
    patience: int | None = Field(
        5,
        ge=1,
        description="penalty objective: stop after this many steps without a lower "
        "validation loss (null: never)",
    )

    @model_validator(mode="after")
    def _positive(self) -> GradientSearch:
        if not self.starts or any(not v > 0 for v in self.starts):
            raise ValueError("study.hypergradient.starts needs positive learning rates")
        return self


class StudyConfig(_Strict):
    strategy: Literal["blackbox", "hypergradient"] = Field(
        "blackbox",
        description="blackbox: Optuna trials (sampler, pruner); hypergradient: the "
        "hyperparameters follow the gradient of the validation loss (study.hypergradient)",
    )
    hypergradient: GradientSearch = GradientSearch()
    name: str = Field("slem-hpo", description="the study's name in its storage")
    sampler: Sampler = Field(
        "tpe", description="bohb: TPE with the Hyperband pruner (Falkner et al. 2018)"
    )
    pruner: Pruner | None = Field(
        None, description="multi-fidelity early stopping; default: hyperband for bohb, else none"
    )
    trials: int = Field(30, ge=1, description="total trials of the study (over all workers)")
    timeout: float | None = Field(None, gt=0, description="seconds per worker")
    seed: int = 0
    grid_points: int = Field(5, ge=2, description="grid sampler: points per numeric param")
    min_resource: int = Field(1, ge=1, description="pruners: the smallest budget (rung 0)")
    reduction_factor: int = Field(3, ge=2, description="sha / hyperband: keep 1 / factor")
    heartbeat: int = Field(
        10, ge=1, description="seconds between a running trial's heartbeats (RDB storages)"
    )
    grace_period: int | None = Field(
        None, ge=1, description="a trial silent this long is failed (default 3 x heartbeat)"
    )
    warm_start: int = Field(
        0,
        ge=0,
        description="CASH: enqueue the best configurations of this many nearest "
        "earlier tasks (meta-feature space) first",
    )
    zero_shot: int = Field(
        0,
        ge=0,
        description="CASH: enqueue this many configurations the zero-shot predictor "
        "ranks best for the task first",
    )
    meta_dataset: str | None = Field(
        None, description="the meta-dataset of earlier tasks (default: the shipped one)"
    )

    @property
    def pruner_name(self) -> str:
        if self.pruner is not None:
            return self.pruner
        return "hyperband" if self.sampler == "bohb" else "none"


class CashObjective(_Strict):
    kind: Literal["cash"]
    data: DataConfig
    families: list[str] | None = Field(None, description="model families (default: all)")
    metric: Literal["balanced_accuracy", "accuracy"] = "balanced_accuracy"
    fidelity: Literal["none", "data_fraction"] = Field(
        "none", description="data_fraction: budgets are growing fractions of the training set"
    )
    min_fraction: float = Field(1 / 9, gt=0, le=1, description="the smallest data fraction")


class TrainObjective(_Strict):
    kind: Literal["train"]
    base: str | dict[str, Any] = Field(
        description="a slem train config: a YAML path, or the config itself"
    )
    space: dict[str, Any] = Field(
        description="dotted config keys -> ranges (see slem.automl.space)"
    )
    metric: Literal["val_accuracy", "val_balanced_accuracy", "val_loss"] = Field(
        "val_accuracy", description="reported every epoch to the pruner; epochs are the budget"
    )


class PenaltyObjective(_Strict):
    """L2 penalties of a linear model on a table (``study.strategy: hypergradient``):
    :func:`slem.automl.penalties.tune_penalties`."""

    kind: Literal["penalty"]
    data: DataConfig
    model: Literal["logistic", "ridge"] = Field(
        "logistic", description="logistic regression (class labels) or ridge (real targets)"
    )
    groups: Literal["feature", "global"] = Field(
        "feature", description="one L2 penalty per input feature, or one for all"
    )
    penalty_range: tuple[float, float] = Field(
        (1e-5, 10.0), description="the penalties are kept in [low, high]"
    )
    prior: float = Field(
        0.0,
        ge=0,
        description="hyper-prior: prior/2 * mean((log penalty - its mean)^2) added to the "
        "validation loss, against overfitting the validation split with many penalties",
    )
    metric: Literal["val_loss"] = Field(
        "val_loss", description="validation log-loss (logistic) or mean squared error (ridge)"
    )

    @model_validator(mode="after")
    def _range(self) -> PenaltyObjective:
        low, high = self.penalty_range
        if not 0 < low < high:
            raise ValueError("objective.penalty_range must be 0 < low < high")
        return self


class HPOConfig(_Strict):
    study: StudyConfig = StudyConfig()
    objective: CashObjective | TrainObjective | PenaltyObjective = Field(discriminator="kind")

    @model_validator(mode="after")
    def _consistent(self) -> HPOConfig:
        o = self.objective
        if isinstance(o, PenaltyObjective) and self.study.strategy != "hypergradient":
            raise ValueError(
                "objective kind penalty is searched by study.strategy hypergradient; a "
                "blackbox search of one global L2 penalty is kind cash with families [logreg]"
            )
        if (
            isinstance(o, CashObjective)
            and self.study.pruner_name != "none"
            and o.fidelity == "none"
        ):
            raise ValueError(
                f"pruner {self.study.pruner_name} needs budgets: set objective.fidelity "
                "data_fraction (or study.pruner none)"
            )
        return self

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        o = self.objective
        if isinstance(o, PenaltyObjective):
            return "minimize"
        return (
            "minimize" if isinstance(o, TrainObjective) and o.metric == "val_loss" else "maximize"
        )


def parse_hpo_config(values: dict[str, Any]) -> HPOConfig:
    try:
        return HPOConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc)) from None
