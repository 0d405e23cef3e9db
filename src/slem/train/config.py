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
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from slem.data.config import DataConfig
from slem.errors import SlemError, validation_message
from slem.methodology.inputs import STATEFUL, check_inputs
from slem.train.callbacks import LoggerName
from slem.train.config_io import apply_overrides as apply_overrides
from slem.train.config_io import load_yaml as load_yaml
from slem.train.config_io import resolve_paths as resolve_paths
from slem.train.config_io import set_dotted as set_dotted
from slem.train.config_methods import (  # the learned algorithms' sections, re-exported
    Activation as Activation,
)
from slem.train.config_methods import (
    AdjusterConfig as AdjusterConfig,
)
from slem.train.config_methods import (
    BBOConfig as BBOConfig,
)
from slem.train.config_methods import (
    Component as Component,
)
from slem.train.config_methods import (
    HWNetConfig as HWNetConfig,
)
from slem.train.config_methods import (
    HypergradientConfig as HypergradientConfig,
)
from slem.train.config_methods import (
    HypergradMethod as HypergradMethod,
)
from slem.train.config_methods import (
    JointConfig as JointConfig,
)
from slem.train.config_methods import (
    LearnedOptimizerConfig as LearnedOptimizerConfig,
)
from slem.train.config_methods import (
    ScheduleConfig as ScheduleConfig,
)
from slem.train.config_methods import (
    TransitionConfig as TransitionConfig,
)
from slem.train.config_methods import (
    _Strict as _Strict,
)
from slem.train.config_methods import (
    parse_bbo_config as parse_bbo_config,
)

if TYPE_CHECKING:
    from slem.train.methods import MethodSpec

#: the keys of a TrainConfig that only some methods read (``MethodSpec.sections``)
METHOD_SECTIONS = (
    "meta",
    "loss",
    "schedule",
    "hypergradient",
    "learned_optimizer",
    "adjuster",
    "transition",
    "hwnet",
    "joint",
    "methodology",
)


class ModelConfig(_Strict):
    arch: str = Field(
        "auto",
        description="auto: mlp for tables, cnn1d for signals, cnn2d for images; cell: the cell "
        "network of a searched architecture (model.genotype); or your own "
        "nn.Module class as 'package.module:ClassName' (built with kwargs)",
    )
    width: int = Field(32, ge=1, description="hidden units / base channels")
    depth: int = Field(2, ge=1, description="hidden layers of the MLP")
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: Activation = Field("relu", description="MLP")
    genotype: str | None = Field(
        None,
        description="arch cell: the cell, as the architecture.json slem nas search wrote (or its "
        "run directory) or NAS-Bench-201's string |conv_3~0|+|skip_connect~0|conv_3~1|; "
        "stored resolved, as the string",
    )
    cells: int = Field(1, ge=1, description="arch cell: cells per stage")
    stages: int = Field(2, ge=1, description="arch cell: stages (channels double between them)")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of a custom arch's constructor (it also gets "
        "input_shape, n_features and n_outputs when its signature names them)",
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        from slem.train.models import check_arch

        return check_arch(arch)

    @field_validator("genotype")
    @classmethod
    def _resolved_genotype(cls, value: str | None) -> str | None:
        from slem.methodology.architecture import resolve_genotype

        if value is None:
            return None
        try:
            genotype = resolve_genotype(value)
        except SlemError as exc:
            raise ValueError(str(exc)) from None
        if not genotype.connected:
            raise ValueError(
                f"cell {genotype} cannot learn: every path from its input to its output is "
                "'none', so it outputs zeros; give at least one path of other operations"
            )
        return str(genotype)

    @model_validator(mode="after")
    def _genotype_needs_cell(self) -> ModelConfig:
        if (self.arch == "cell") != (self.genotype is not None):
            raise ValueError(
                "model.arch cell needs model.genotype (an architecture.json or a genotype "
                "string), and model.genotype needs model.arch cell"
            )
        return self

    @model_validator(mode="after")
    def _kwargs_need_custom_arch(self) -> ModelConfig:
        if self.kwargs and ":" not in self.arch:
            raise ValueError(
                f"kwargs are for a custom arch ('package.module:ClassName'); arch {self.arch} "
                "takes width, depth, dropout and activation"
            )
        return self


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
    interval: int = Field(
        1,
        ge=1,
        description="a meta step every k training steps (the fast mode: a step then costs "
        "about 1 + (r - 1) / k plain steps for a meta step of r; 5 with order lagged keeps it "
        "under 1.5x on the benchmark CNNs at the exact mode's accuracy)",
    )
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
    inputs: list[str] = Field(
        default_factory=lambda: ["loss"],
        description="what the weighting rule reads, one input each: loss (MW-Net), "
        "loss_ratio, loss_rank, history, progress, noise_estimate, log_classes "
        "(slem.methodology.inputs: all but loss mean the same on every task, for rules "
        "meta-trained across tasks)",
    )

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, names: list[str]) -> list[str]:
        return list(check_inputs(names))

    @model_validator(mode="after")
    def _history_needs_real_losses(self) -> MetaConfig:
        stateful = [n for n in self.inputs if n in STATEFUL]
        if stateful and self.order == "lagged":
            raise ValueError(
                f"order lagged takes no real step's losses, which the inputs {stateful} are "
                "made of; use order mwnet"
            )
        return self

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
    scope: Literal["model", "head"] = Field(
        "model",
        description="the parameters the virtual step moves and the hypergradient flows "
        "through: model (every trainable parameter: the exact one-step hypergradient of "
        "MW-Net) or head (only the model's output layer, on features computed once: about "
        "1.3-1.7x a plain step instead of 3-4x, but the hypergradient of a frozen body, which "
        "cost accuracy on MNIST-1D; the layer-subset approximation of FaMUS, Xu et al. 2021). "
        "For a cheap exact hypergradient use meta.interval",
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
    hypergradient: HypergradientConfig = HypergradientConfig()
    learned_optimizer: LearnedOptimizerConfig = LearnedOptimizerConfig()
    adjuster: AdjusterConfig = AdjusterConfig()
    transition: TransitionConfig = TransitionConfig()
    hwnet: HWNetConfig = HWNetConfig()
    joint: JointConfig = JointConfig()
    methodology: str | None = Field(
        None, description="apply: the artifact directory, or zoo:NAME for a shipped one"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads torch may use; None: min(4, available cores), or torch's own "
        "setting when OMP_NUM_THREADS is set (slem.train.threads). Not part of the result.",
    )
    checkpoint_every: int = Field(200, ge=1, description="steps between mid-epoch checkpoints")
    loggers: list[LoggerName] = Field(
        default_factory=list,
        description="where the epoch metrics go besides metrics.jsonl: csv (metrics.csv), "
        "tensorboard (tensorboard/, needs pip install 'slem[tensorboard]'). Not part of the "
        "result.",
    )

    @field_validator("loggers")
    @classmethod
    def _each_logger_once(cls, names: list[LoggerName]) -> list[LoggerName]:
        return list(dict.fromkeys(names))

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

    @field_validator("methodology")
    @classmethod
    def _known_zoo_entry(cls, value: str | None) -> str | None:
        """``zoo:NAME`` must name a shipped entry (checked now, not when training starts)."""
        from slem import zoo

        if value is not None and zoo.is_zoo(value):
            zoo.path(value)  # SlemError: the available names
        return value

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

    if "learner" in values and "method" not in values:
        raise SlemError(
            "this is a slem fewshot config (it names a learner, not a method); run it with: "
            "slem fewshot train FILE"
        )
    if "search" in values and "method" not in values:
        raise SlemError(
            "this is a slem nas config (it names a search, not a method); run it with: "
            "slem nas search FILE"
        )
    values = apply_preset(values)
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc)) from None
