"""The config of one training run (``slem train CONFIG.yaml``), as pydantic models.

A SLeM config and a baseline config differ only by ``method``. Every field is validated with
a message naming it; cross-field checks (e.g. a clean meta objective without a meta set) say
which field to set.

The common sections (``data``, ``model``, ``optim``, ``seed``, ...) are read by every method;
each of the :data:`METHOD_SECTIONS` only by the methods whose registry entry names it
(:attr:`slem.train.methods.MethodSpec.sections`). A method-specific section that the config
sets to a value of its own and that its method does not read is refused (it would be
silently ignored); one equal to its defaults is accepted, because it changes nothing and
every config slem writes (a run's ``config.yaml``, an artifact's ``training_config``) holds
every section.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from slem.data.config import DataConfig
from slem.errors import SlemError, validation_message
from slem.train.config_io import apply_overrides as apply_overrides
from slem.train.config_io import load_yaml as load_yaml
from slem.train.config_io import set_dotted as set_dotted

if TYPE_CHECKING:
    from slem.train.methods import MethodSpec

#: the keys of a TrainConfig that only some methods read (``MethodSpec.sections``)
METHOD_SECTIONS = (
    "meta",
    "loss",
    "schedule",
    "learned_optimizer",
    "adjuster",
    "transition",
    "hwnet",
    "joint",
    "methodology",
)

#: what may go into ``joint.components``
Component = Literal["mwnet", "cmwnet", "loss_adjuster", "transition", "lr_schedule"]
HypergradMethod = Literal[
    "lookahead", "finite_difference", "first_order", "unrolled", "forward", "implicit"
]


Activation = Literal["relu", "tanh", "sigmoid", "gelu"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    arch: Literal["auto", "mlp", "cnn1d", "cnn2d"] = Field(
        "auto", description="auto: mlp for tables, cnn1d for signals, cnn2d for images"
    )
    width: int = Field(32, ge=1, description="hidden units / base channels")
    depth: int = Field(2, ge=1, description="hidden layers of the MLP")
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Activation = Field("relu", description="MLP")


class OptimConfig(_Strict):
    optimizer: Literal["sgd", "adam", "rmsprop"] = Field(
        "sgd",
        description="meta-learned methods: sgd or adam (the virtual step takes the same "
        "update), rmsprop with meta.virtual_step sgd; a learned learning rate needs sgd",
    )
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0, description="the (peak) learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum; rmsprop momentum")
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant", "onecycle"] = Field(
        "cosine",
        description="onecycle: linear warm-up from lr/25 over 30% of the steps, then cosine "
        "down to lr/1e4",
    )
    milestones: list[float] = Field(
        default_factory=lambda: [0.5, 0.75], description="step schedule, fractions of epochs"
    )
    gamma: float = Field(0.1, gt=0, le=1)


class MetaConfig(_Strict):
    objective: Literal["clean", "dac", "clean+dac", "selected"] = Field(
        "clean", description="clean meta set, DAC-MR (no meta set), both, or self-selected"
    )
    hypergrad: HypergradMethod = "lookahead"
    interval: int = Field(1, ge=1, description="a meta step every k training steps")
    warmup_epochs: int = Field(1, ge=0, description="plain ERM epochs before meta-learning")
    lr: float = Field(1e-3, gt=0, description="learning rate of the methodology's optimizer")
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adam", "sgd"] = Field(
        "adam",
        description="the methodology's optimizer (MW-Net's noisy-label script: adam; its "
        "WRN script and class-imbalance script: sgd)",
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="meta.optimizer sgd: momentum")
    nesterov: bool = Field(False, description="meta.optimizer sgd: Nesterov momentum")
    amsgrad: bool = Field(False, description="meta.optimizer adam: the AMSGrad variant")
    hidden: int = Field(100, ge=1)
    n_groups: int = Field(3, ge=1, description="class size groups (CMW-Net)")
    monotone: bool = Field(
        False,
        description="weights non-increasing in the loss (MW-Net, CMW-Net): for label noise, "
        "and a safeguard when the rule is applied to new tasks; not for imbalance, where "
        "rare classes need large losses up-weighted",
    )
    batch_size: int = Field(100, ge=1, description="meta (outer) batch size")
    normalize_weights: Literal["auto", "batch", "class", "none"] = Field(
        "auto",
        description="batch: weights sum to the batch size (MW-Net); class: to each given "
        "label's count in the batch, so a class the model lost keeps its share of the step "
        "(for label noise; never under imbalance, where it undoes the re-weighting); auto: "
        "class when the observed label counts are balanced (largest < 3x smallest), else "
        "batch; none (true/false mean batch/none; label correction's weights are never "
        "normalized)",
    )

    @field_validator("normalize_weights", mode="before")
    @classmethod
    def _normalize_flag(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "batch" if value else "none"
        return value

    order: Literal["mwnet", "lagged"] = Field(
        "mwnet",
        description="mwnet: real step after the meta update; lagged: reuse the "
        "virtual step as the real one (cheaper)",
    )
    jvp_mode: Literal["forward", "difference"] = Field(
        "forward",
        description="lookahead fast path: forward-mode JVP (exact) or a central difference of "
        "two forwards (step 1e-2, 1e-6 in float64; O(eps) error where a ReLU kink lies in "
        "the step)",
    )
    virtual_step: Literal["optimizer", "sgd"] = Field(
        "optimizer",
        description="the update the meta step looks ahead through: optimizer (default: the "
        "real optimizer's own step, momentum, Nesterov and weight decay included, or Adam's; "
        "the hypergradient is that of the iterate training will reach) or sgd (plain "
        "theta - lr * grad, as the official MW-Net and CMW-Net code)",
    )
    dac_weight: float = Field(1.0, ge=0, description="weight of DAC-MR in the meta objective")
    dac_prior_weight: float = Field(
        0.0,
        ge=0,
        description="weight of KL(observed label prior || mean prediction on the DAC batch) "
        "in the meta objective: a constant model is perfectly consistent, and this keeps "
        "DAC-MR from rewarding one",
    )
    clean_weight: float = Field(1.0, ge=0, description="weight of the clean meta loss")
    dac_temperature: float = Field(0.5, gt=0, description="sharpening of the weak-view target")
    select_per_class: int = Field(10, ge=1, description="'selected': clean samples per class")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="CMW-Net-SL teacher EMA")
    sl_temperature: float = Field(0.5, gt=0, description="CMW-Net-SL pseudo-label sharpening")
    sl_prior_correction: bool = Field(
        True,
        description="CMW-Net-SL: subtract the log of the observed class prior from the "
        "teacher's logits, so a teacher trained on imbalanced data does not relabel rare "
        "classes as frequent ones (a no-op on balanced data)",
    )


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


class LossConfig(_Strict):
    gce_q: float = Field(0.7, gt=0, le=1)
    sce_alpha: float = Field(0.1, ge=0)
    sce_beta: float = Field(1.0, ge=0)
    bootstrap_beta: float = Field(0.95, ge=0, le=1)
    bootstrap_mode: Literal["soft", "hard"] = "soft"
    cb_beta: float = Field(0.999, ge=0, lt=1, description="class-balanced loss")
    finetune_epochs: int = Field(5, ge=1, description="finetune: epochs on the meta set")
    finetune_lr_factor: float = Field(0.1, gt=0)
    huber_delta: float = Field(1.0, gt=0, description="huber: in robust target units")
    forward_transition: Literal["anchor", "true"] = Field(
        "anchor",
        description="forward: a matrix estimated from anchor points after the warm-up, or the "
        "true one (an oracle; per sample under instance-dependent noise)",
    )
    forward_warmup_epochs: int = Field(
        5, ge=1, description="forward (anchor): plain CE epochs before the estimate"
    )
    anchor_quantile: float = Field(
        0.97, gt=0, le=1, description="forward (anchor): quantile of p(class) taken as anchor"
    )


class TrainConfig(_Strict):
    preset: str | None = Field(
        None,
        description="a published protocol (slem presets) that fills method, optim and meta "
        "fields; fields given in the config or with --set win",
    )
    method: str = Field(
        description="the training method: a name of the method registry (slem.train.methods)"
    )
    data: DataConfig | None = Field(
        None,
        description="the task's data; may be left out when the Task is given "
        "(make_trainer(config, task)), required by slem train and build_task",
    )
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    meta: MetaConfig = MetaConfig()
    loss: LossConfig = LossConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    learned_optimizer: LearnedOptimizerConfig = LearnedOptimizerConfig()
    adjuster: AdjusterConfig = AdjusterConfig()
    transition: TransitionConfig = TransitionConfig()
    hwnet: HWNetConfig = HWNetConfig()
    joint: JointConfig = JointConfig()
    methodology: str | None = Field(None, description="apply: the artifact directory")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads torch may use; None: min(4, available cores), or torch's own "
        "setting when OMP_NUM_THREADS is set (slem.train.threads). Not part of the result.",
    )
    checkpoint_every: int = Field(200, ge=1, description="steps between mid-epoch checkpoints")
    select_on: Literal["auto", "accuracy", "balanced_accuracy"] = Field(
        "auto",
        description="validation metric that picks the best epoch; auto: balanced accuracy "
        "(mean per-class recall) when the training classes are imbalanced (largest / smallest "
        ">= 3), else accuracy",
    )

    def __init__(self, /, **data: Any) -> None:
        """``TrainConfig(method="mwnet", optim={...})`` validates as YAML configs do: the
        ``preset`` is resolved and a bad value is a one-line :class:`SlemError` (not a
        multi-line pydantic error)."""
        from slem.train.presets import apply_preset

        try:
            super().__init__(**apply_preset(data))
        except ValidationError as exc:
            raise SlemError(validation_message(exc)) from None

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        from slem.train.methods import method_names

        names = method_names()
        if value not in names:
            listed = ", ".join(repr(n) for n in names[:-1]) + f" or {names[-1]!r}"
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"Input should be {listed}{hint}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        spec = self.spec
        needs = spec.needs_meta_set(self)
        if needs is not None and self.data is not None and not self.data.has_meta_set:
            raise ValueError(f"{needs}: {spec.meta_set_hint}")
        from slem.train.validity import check_config

        check_config(self)
        unread = self._unread_section()
        if unread is not None:
            raise SlemError(unread)
        why = spec.check(self) if spec.check is not None else None
        if why is not None:
            raise ValueError(why)
        if spec.frozen_artifact and not self.methodology:
            raise ValueError(
                f"method {self.method} needs methodology: the path of a saved artifact"
            )
        return self

    def _unread_section(self) -> str | None:
        """Why a method-specific section set to a value of its own is refused: its method
        does not read it (one line naming the section, the method, what the method reads and
        the methods that read the section), or None."""
        from slem.train.methods import methods_reading

        spec = self.spec
        reads = spec.sections_of(self)
        for name in METHOD_SECTIONS:
            if name not in self.model_fields_set or name in reads:
                continue
            if getattr(self, name) == type(self).model_fields[name].get_default(
                call_default_factory=True
            ):
                continue  # the defaults, as every saved config writes them: changes nothing
            what = "section" if isinstance(getattr(self, name), BaseModel) else "field"
            it_reads = f"it reads: {', '.join(reads)}" if reads else "it reads none"
            if name in spec.sections:  # a bundle without the component that reads it
                parts = [c for c in get_args(Component) if name in _sections_of_method(c)]
                chosen = ", ".join(spec.components_of(self))
                return (
                    f"{name}: method '{self.method}' with joint.components [{chosen}] does not "
                    f"read this {what} ({it_reads}); remove it, or add "
                    f"{' or '.join(parts)} to joint.components"
                )
            readers = ", ".join(methods_reading(name))
            return (
                f"{name}: method '{self.method}' does not read this {what} ({it_reads}); "
                f"remove it, or use a method that does: {readers}"
            )
        return None

    @property
    def spec(self) -> MethodSpec:
        """``method``'s entry in the method registry (:mod:`slem.train.methods`)."""
        from slem.train.methods import get_method

        return get_method(self.method)

    @property
    def is_meta(self) -> bool:
        """The method meta-learns a methodology."""
        return self.spec.is_meta

    @property
    def needs_meta_set(self) -> str | None:
        """Why this config needs a clean meta set (the start of an error message), or None."""
        return self.spec.needs_meta_set(self)


def _sections_of_method(name: str) -> tuple[str, ...]:
    from slem.train.methods import get_method

    return get_method(name).sections


def without_unread_sections(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a config mapping, its preset resolved) without the method-specific sections
    its method does not read in it, whatever their values: for configs that are assembled for
    a method that may differ from the one their sections were written for (an HPO trial whose
    method, or joint's components, the search space chose; a run directory written before
    such sections were refused, whose run ignored them). Values whose method is not
    registered are returned as they are (validation names the problem)."""
    from slem.train.methods import get_method, method_names
    from slem.train.presets import apply_preset

    values = apply_preset(values)
    method = values.get("method")
    if not isinstance(method, str) or method not in method_names():
        return values
    fields: dict[str, Any] = {}
    for name in METHOD_SECTIONS:  # the sections a method's sections_in may look at
        if name in values:
            annotation = TrainConfig.model_fields[name].annotation
            assert annotation is not None
            with contextlib.suppress(ValidationError):  # else left to the config's validation
                fields[name] = TypeAdapter(annotation).validate_python(values[name])
    reads = get_method(method).sections_of(TrainConfig.model_construct(method=method, **fields))
    return {k: v for k, v in values.items() if k not in METHOD_SECTIONS or k in reads}


def parse_train_config(values: dict[str, Any]) -> TrainConfig:
    """Validate ``values`` (after resolving ``preset``, see slem.train.presets) into a
    :class:`TrainConfig`; a one-line SlemError otherwise."""
    from slem.train.presets import apply_preset

    values = apply_preset(values)
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc)) from None
