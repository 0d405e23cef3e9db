"""The config sections of the learned algorithms and of model and loss adjustment: what the
methods ``lr_schedule``, ``learned_optimizer``, ``loss_adjuster``, ``transition``, ``hwnet``
and ``joint`` read, and ``slem bbo``'s config. Re-exported by :mod:`slem.train.config`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slem.errors import SlemError, validation_message

#: what may go into ``joint.components``
Component = Literal["mwnet", "cmwnet", "loss_adjuster", "transition", "lr_schedule"]
HypergradMethod = Literal[
    "lookahead", "finite_difference", "first_order", "unrolled", "forward", "implicit"
]


Activation = Literal["relu", "tanh", "sigmoid", "gelu"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleConfig(_Strict):
    """MLR-SNet (method lr_schedule): the schedule net and its meta-training."""

    hidden: int = Field(50, ge=1, description="LSTM hidden units")
    stages: int = Field(3, ge=1, description="snapshots kept over meta-training")
    switch_at: list[float] | None = Field(
        None, description="fractions of a run where each snapshot takes over (default 0, 1/3, 2/3)"
    )
    interval: int = Field(1, ge=1, description="a meta step every k training steps")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the schedule net")
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(100, ge=1, description="meta-set batch of each meta step")
    max_lr: float = Field(10.0, gt=0, description="a learned rate above this stops the run")
    swap_snapshots: bool = Field(
        True, description="apply: swap the snapshots in over the run (else the final one only)"
    )


Tunable = Literal["lr", "weight_decay"]


class HypergradientConfig(_Strict):
    """Method hypergradient: the learning rate and weight decay tuned during the run by online
    hypergradients of the validation loss (:class:`~slem.train.online_hpo.OnlineHPOTrainer`)."""

    tune: list[Tunable] = Field(
        default_factory=lambda: list[Tunable](["lr", "weight_decay"]),
        description="the hyperparameters to tune, from optim.lr and optim.weight_decay",
    )
    horizon: int = Field(
        0,
        ge=0,
        description="training steps per hyperparameter update (0: one epoch)",
    )
    memory: float = Field(
        1.0,
        ge=0,
        le=1,
        description="the tangents after an update are scaled by this: 1 keeps the whole run "
        "(RTHO), 0 restarts them (a truncated horizon, biased to small rates: Wu et al. "
        "2018), between them older steps fade",
    )
    lr: float = Field(
        0.3, gt=0, description="Adam step on the log-hyperparameters (natural-log units)"
    )
    batch_size: int = Field(
        256, ge=1, description="outer batch: validation (or meta-set) samples per update"
    )
    lr_range: tuple[float, float] = Field(
        (1e-5, 10.0), description="the base learning rate is kept inside [low, high]"
    )
    weight_decay_range: tuple[float, float] = Field(
        (1e-8, 0.1), description="the weight decay is kept inside [low, high]"
    )

    @model_validator(mode="after")
    def _valid(self) -> HypergradientConfig:
        if not self.tune or len(set(self.tune)) != len(self.tune):
            raise ValueError("hypergradient.tune needs lr and/or weight_decay, each once")
        for name, (low, high) in (("lr", self.lr_range), ("weight_decay", self.weight_decay_range)):
            if not 0 < low < high:
                raise ValueError(f"hypergradient.{name}_range must be 0 < low < high")
        return self


class LearnedOptimizerConfig(_Strict):
    """The coordinatewise LSTM optimizer (method learned_optimizer) and its meta-training on a
    population of MLP optimizees (every width x activation on every dataset)."""

    hidden: int = Field(20, ge=1, description="LSTM hidden units")
    layers: int = Field(2, ge=1, description="stacked LSTM cells")
    output_scale: float = Field(0.1, gt=0, description="the LSTM output times this is the step")
    p: float = Field(10.0, gt=0, description="gradient preprocessing constant")
    datasets: list[str] = Field(
        default_factory=lambda: ["mnist1d", "digits"],
        description="classification datasets of the optimizee population",
    )
    dataset_size: int | None = Field(4000, ge=10, description="samples drawn per dataset")
    widths: list[int] = Field(default_factory=lambda: [16, 32], description="MLP widths")
    activations: list[Activation] = Field(
        default_factory=lambda: list[Activation](["relu", "tanh", "sigmoid"])
    )
    depths: list[int] = Field(
        default_factory=lambda: [1, 2], description="hidden layers of the optimizee MLPs"
    )
    batch_size: int = Field(128, ge=1)
    horizon: int = Field(400, ge=1, description="optimizee steps before a fresh one is drawn")
    unroll: int = Field(20, ge=1, description="truncation: steps per meta-gradient")
    iterations: int = Field(1500, ge=1, description="meta-gradient steps")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the LSTM")
    clip: float = Field(1.0, gt=0, description="meta-gradient norm clip")
    loss_weights: Literal["uniform", "increasing"] = Field(
        "increasing",
        description="weights of the per-step losses summed over the unroll (increasing: "
        "t / unroll, which favours where the optimizee ends up over how fast it gets there)",
    )
    checkpoint_every: int = Field(25, ge=1, description="meta-iterations between checkpoints")

    @model_validator(mode="after")
    def _non_empty(self) -> LearnedOptimizerConfig:
        for name in ("datasets", "widths", "activations", "depths"):
            if not getattr(self, name):
                raise ValueError(f"learned_optimizer.{name} needs at least one entry")
        if self.unroll > self.horizon:
            raise ValueError(
                f"learned_optimizer.unroll ({self.unroll}) must not exceed horizon ({self.horizon})"
            )
        return self


class BBOConfig(_Strict):
    """Meta-training a learned black-box optimizer (``slem bbo train``)."""

    dim: int = Field(2, ge=1, le=32, description="dimension of the search space [0, 1]^dim")
    hidden: int = Field(64, ge=1, description="LSTM hidden units")
    layers: int = Field(2, ge=1)
    steps: int = Field(30, ge=2, description="queries per search (the meta-training horizon)")
    loss: Literal["sum", "oi", "ei"] = Field(
        "oi", description="sum of values, observed improvement, or expected improvement (GP)"
    )
    families: list[Literal["gp", "quadratic", "standard"]] = Field(
        default_factory=lambda: list[Literal["gp", "quadratic", "standard"]](
            ["gp", "quadratic", "standard"]
        ),
        description="training function families",
    )
    batch_size: int = Field(64, ge=1, description="functions per meta step")
    iterations: int = Field(1500, ge=1)
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the RNN")
    clip: float = Field(1.0, gt=0)
    ei_lengthscale: float = Field(0.2, gt=0, description="RBF lengthscale of the EI loss's GP")
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _non_empty(self) -> BBOConfig:
        if not self.families:
            raise ValueError("families needs at least one of gp, quadratic, standard")
        return self


def parse_bbo_config(values: dict[str, Any]) -> BBOConfig:
    try:
        return BBOConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc)) from None


class AdjusterConfig(_Strict):
    """The meta loss adjuster (method loss_adjuster, or a joint component): a net from a
    sample's logit margin and loss to the hyperparameters of its robust loss."""

    family: Literal["gce", "sce"] = Field(
        "gce", description="gce: predicts q per sample; sce: predicts alpha and beta"
    )
    hidden: int = Field(64, ge=1)


class TransitionConfig(_Strict):
    """The meta-learned instance-dependent noise-transition network (method transition)."""

    hidden: int = Field(64, ge=1)
    init_diagonal: float = Field(
        0.8, gt=0, lt=1, description="initial P(noisy label = clean label), the same per class"
    )


class HWNetConfig(_Strict):
    """The regression hyper-weight net (method hwnet)."""

    mode: Literal["mix", "weight"] = Field(
        "mix", description="mix: a per-sample mixture of the losses; weight: a sample weight"
    )
    losses: list[Literal["l2", "l1", "huber", "cauchy", "logcosh"]] = Field(
        default_factory=lambda: list[Literal["l2", "l1", "huber", "cauchy", "logcosh"]](
            ["l2", "l1", "huber", "cauchy"]
        ),
        description="the loss family mixed in mode mix (residuals in robust target units)",
    )
    use_inputs: bool = Field(False, description="also feed the mean and std of the inputs")
    signed: bool = Field(
        False,
        description="also feed the signed residual r besides |r| (off by default: the sign "
        "lets a one-step lookahead steer the model through chosen large residuals)",
    )
    hidden: int = Field(100, ge=1)
    weighted_loss: Literal["l2", "l1", "huber", "cauchy", "logcosh"] = Field(
        "l1",
        description="mode weight: the loss the weight multiplies (l1: bounded gradients; "
        "with l2, up-weighting large residuals is a bigger step, which a one-step lookahead "
        "always wants, so the net learned to trust outliers: weight AUC 0.29-0.65)",
    )
    warmup_loss: Literal["l2", "l1"] = Field(
        "l1",
        description="the loss of the meta.warmup_epochs before meta-learning starts (l1 fits "
        "the bulk of the targets, so large residuals then mean corrupted targets)",
    )


class JointConfig(_Strict):
    """Method joint: the methodologies one run meta-learns together."""

    components: list[Component] = Field(
        default_factory=lambda: list[Component](["mwnet", "loss_adjuster", "lr_schedule"]),
        description="any of mwnet or cmwnet (at most one), loss_adjuster, transition, lr_schedule",
    )

    @model_validator(mode="after")
    def _valid(self) -> JointConfig:
        if not self.components:
            raise ValueError("joint.components needs at least one methodology")
        if len(set(self.components)) != len(self.components):
            raise ValueError("joint.components lists a methodology twice")
        if {"mwnet", "cmwnet"} <= set(self.components):
            raise ValueError("joint.components: use mwnet or cmwnet, not both")
        return self
