"""The method registry: every value of ``TrainConfig.method`` and what it means.

A method is one :class:`MethodSpec`: its name, the targets it trains on, the method-specific
config sections it reads, whether it meta-learns a methodology (and through which meta step),
when it needs a clean meta set, its per-sample training loss, the artifact kinds it applies
frozen, and the builder of its trainer. Every other module asks the registry
(``method_spec(config)``); none compares method names. A new method is one :func:`register`
call.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from torch import Tensor, nn

from slem.errors import SlemError
from slem.train import losses as L

if TYPE_CHECKING:
    from slem.data.task import Task
    from slem.methodology import Methodology
    from slem.train.callbacks import Callback
    from slem.train.config import TrainConfig
    from slem.train.trainer import Trainer

#: builds a method's trainer: (config, task, model, methodology, callbacks) -> trainer
Builder = Callable[
    ["TrainConfig", "Task", "nn.Module | None", "Methodology | None", "Sequence[Callback]"],
    "Trainer",
]
#: a per-sample training loss: (logits or predictions, targets, trainer) -> (batch,)
Loss = Callable[[Tensor, Tensor, "Trainer"], Tensor]
Target = Literal["classification", "regression"]


def cross_entropy(logits: Tensor, y: Tensor, trainer: Trainer) -> Tensor:
    return L.cross_entropy(logits, y)


@dataclass(frozen=True)
class MethodSpec:
    """One training method.

    Attributes:
        name: the value of ``TrainConfig.method``.
        summary: one line for help texts and docs.
        target: ``classification`` (class labels) or ``regression`` (real targets); None for
            ``apply``, whose target is the artifact's.
        build: the builder of the method's trainer.
        sections: the method-specific sections of :class:`~slem.train.config.TrainConfig`
            (``METHOD_SECTIONS``: ``meta``, ``loss``, ``schedule``, ...) it may read; the
            config refuses any other one that is set to a value of its own.
        meta_learns: the methodology kind(s) it meta-learns while training (empty: none).
        meta_step: ``engine``: its meta step is a :class:`~slem.train.meta_step.MetaStep`
            over ``meta.hypergrad`` (every hypergradient method applies); ``rate``: one exact
            step of a learning-rate problem (``schedule.*``); ``truncated``: the engine's
            ``first_order`` hypergradient of the trajectory objective over a truncated
            unroll, on a population of tasks (``learned_optimizer.*``; a fixed method, so
            ``meta.*`` does not apply); None: no meta step.
        meta_set: when it needs a clean meta set: ``always``, ``objective`` (when
            ``meta.objective`` has a clean part) or ``never``.
        meta_set_reason: the start of the error when ``always`` and the task has none.
        meta_set_hint: how to give it one (appended to that error).
        loss: its per-sample training loss (default cross-entropy).
        finetune: it fine-tunes on the meta set after training (``loss.finetune_epochs``).
        applies: the artifact kinds method ``apply`` runs through this method's ``build``.
        apply_build: the builder for those artifacts (default ``build``).
        components: the methodologies a bundle method meta-learns (``joint.components``).
        weighted_problem: its meta step is a :class:`~slem.bilevel.WeightedProblem` (the
            lookahead fast path; ``meta.order`` and ``meta.jvp_mode`` apply).
        cross_task: one methodology can be meta-trained over a family of tasks
            (``slem meta-train``, :mod:`slem.train.cross_task`): its trainer takes its meta
            step in two phases (:class:`~slem.train.meta_step.PhasedMetaStep`) and its
            methodology reads nothing sized to one task (inputs, class count).
        check: the method's own config rule: why a config cannot run (one line), or None.
        sections_in: the sections it reads in a given config, when that depends on the
            config (a bundle: its own and those of the chosen components); default
            ``sections``.
        frozen_artifact: it trains with the saved artifact ``config.methodology``, frozen.
        meta_train: a first phase that meta-trains the methodology before training (the
            learned optimizer): ``(config, run_dir, resume, progress, on_trainer)`` to the
            frozen methodology, its artifact written into ``run_dir``.
    """

    name: str
    summary: str
    target: Target | None
    build: Builder
    meta_learns: tuple[str, ...] = ()
    meta_step: Literal["engine", "rate", "truncated"] | None = None
    meta_set: Literal["always", "objective", "never"] = "never"
    meta_set_reason: str = ""
    meta_set_hint: str = "set data.meta_per_class (e.g. 10) or a trusted file data.meta"
    loss: Loss = cross_entropy
    finetune: bool = False
    applies: tuple[str, ...] = ()
    apply_build: Builder | None = None
    components: Callable[[TrainConfig], list[str]] | None = field(default=None, repr=False)
    frozen_artifact: bool = False
    weighted_problem: bool = False
    cross_task: bool = False
    check: Callable[[TrainConfig], str | None] | None = field(default=None, repr=False)
    meta_train: Callable[..., Methodology] | None = field(default=None, repr=False)
    sections: tuple[str, ...] = ()  # last: positional construction keeps its meaning
    sections_in: Callable[[TrainConfig], tuple[str, ...]] | None = field(default=None, repr=False)

    @property
    def is_meta(self) -> bool:
        """It meta-learns a methodology (and saves it as an artifact)."""
        return bool(self.meta_learns)

    @property
    def own_meta_step(self) -> bool:
        """It meta-learns with its own meta step, a fixed engine method on its own problem
        (``meta.*`` does not apply)."""
        return self.meta_step in ("rate", "truncated")

    @property
    def engine(self) -> bool:
        """Its meta step goes through the bilevel engine: ``meta.hypergrad`` applies."""
        return self.meta_step == "engine"

    def sections_of(self, config: TrainConfig) -> tuple[str, ...]:
        """The method-specific sections it reads in ``config`` (a subset of ``sections``)."""
        return self.sections_in(config) if self.sections_in is not None else self.sections

    def components_of(self, config: TrainConfig) -> list[str]:
        """The methodologies this method meta-learns in ``config`` (bundles: their parts)."""
        return self.components(config) if self.components is not None else list(self.meta_learns)

    def check_target(self, task: Task) -> None:
        """Refuse a ``task`` whose targets are not this method's (rule 7).

        Raises:
            SlemError: one line naming the method, the task and the methods that fit.
        """
        kind = "classification" if task.is_classification else "regression"
        if self.target is not None and self.target != kind:
            raise target_error(self, task)

    def needs_meta_set(self, config: TrainConfig) -> str | None:
        """Why ``config`` needs a clean meta set (the start of an error message), or None."""
        if self.meta_set == "always":
            return self.meta_set_reason
        if self.meta_set == "objective" and "clean" in config.meta.objective:
            return f"meta.objective '{config.meta.objective}' needs a clean meta set"
        return None


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (a name registered twice is a programming error)."""
    from slem.train.config import METHOD_SECTIONS

    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    unknown = [s for s in spec.sections if s not in METHOD_SECTIONS]
    if unknown:
        raise ValueError(
            f"method {spec.name!r} names {unknown}, which are not method-specific config "
            f"sections ({', '.join(METHOD_SECTIONS)})"
        )
    METHODS[spec.name] = spec
    return spec


def method_names(target: Target | None = None) -> list[str]:
    """Every registered method name, or those that train on ``target``."""
    _load_builtin()
    return [n for n, s in METHODS.items() if target is None or s.target == target]


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``.

    Raises:
        SlemError: no method has that name (the message lists those that exist).
    """
    _load_builtin()
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SlemError(f"method '{name}' does not exist{hint}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def methods_reading(section: str) -> list[str]:
    """The methods that read the config section ``section`` (registry order)."""
    return [n for n in method_names() if section in METHODS[n].sections]


def method_spec(config: TrainConfig) -> MethodSpec:
    """The spec of ``config.method``."""
    return get_method(config.method)


def spec_applying(methodology: Methodology) -> MethodSpec:
    """The method whose trainer applies a frozen ``methodology`` (by its kind).

    Raises:
        SlemError: no method applies that kind.
    """
    _load_builtin()
    for spec in METHODS.values():
        if methodology.kind in spec.applies:
            return spec
    use = f"; use it with '{methodology.used_with}'" if methodology.used_with else ""
    kinds = ", ".join(k for s in METHODS.values() for k in s.applies)
    raise SlemError(
        f"cannot train with a '{methodology.kind}' methodology: training applies {kinds}{use}"
    )


def check_fits(config: TrainConfig, task: Task, methodology: Methodology | None = None) -> None:
    """Refuse a method, or for ``apply`` a ``methodology``, that does not fit ``task``'s
    targets (rule 7), before anything is built or written.

    Raises:
        SlemError: one line naming the method (or the artifact's kind), the task, and what
            fits.
    """
    spec = method_spec(config)
    if not spec.frozen_artifact:
        from slem.train.validity import check_task

        check_task(config, task)
        return
    if methodology is None:
        return
    applied = spec_applying(methodology)
    kind = "classification" if task.is_classification else "regression"
    if applied.target not in (None, kind):
        raise SlemError(
            f"the '{methodology.kind}' methodology applies to {applied.target} tasks, but "
            f"'{task.name}' is a {kind} task; choose {applied.target} data (--data)"
        )


def data_parallel_refusal(config: TrainConfig) -> str | None:
    """Why ``config`` cannot train data-parallel on one task (one line), or None.

    Plain training and every baseline can, and so can applying a frozen methodology whose
    trainer can (:attr:`~slem.train.Trainer.serial_only`); meta-learning only through the
    per-sample-weight fast path (a :class:`~slem.bilevel.WeightedProblem` under
    ``meta.hypergrad lookahead``), which combines the ranks exactly.
    """
    spec = method_spec(config)
    if not spec.is_meta:
        return None
    fast = ", ".join(n for n in method_names() if METHODS[n].weighted_problem)
    if not spec.weighted_problem:
        return (
            f"method {spec.name} cannot train data-parallel on several ranks: data-parallel "
            f"meta-learning takes the per-sample-weight fast path ({fast}); run it on one "
            "process"
        )
    if config.meta.hypergrad != "lookahead":
        return (
            f"data-parallel meta-learning needs meta.hypergrad lookahead (the per-sample-"
            f"weight fast path), not {config.meta.hypergrad}; set it or run on one process"
        )
    return None


def build_trainer(
    config: TrainConfig,
    task: Task,
    model: nn.Module | None,
    methodology: Methodology | None,
    callbacks: Sequence[Callback],
) -> Trainer:
    """The trainer ``config.method``'s builder makes (see :func:`~slem.train.make_trainer`)."""
    return method_spec(config).build(config, task, model, methodology, callbacks)


#: the columns of :func:`table_rows`
TABLE_HEADER = (
    "method",
    "targets",
    "config sections",
    "meta-learns",
    "meta step",
    "meta set",
    "what it is",
)
_META_SET = {"always": "needed", "objective": "for a clean objective", "never": "-"}


def table_rows(target: Target | None = None) -> list[tuple[str, ...]]:
    """One row per method (``slem methods`` and its ``--markdown`` docs table): the targets,
    the method-specific config sections it reads, what it meta-learns, its meta step, when it
    needs a meta set, its summary. ``target``: only the methods for it (and ``apply``)."""
    rows: list[tuple[str, ...]] = []
    for name in method_names():
        spec = METHODS[name]
        if target is not None and spec.target not in (target, None):
            continue
        sections = ", ".join(spec.sections) or "-"
        if spec.sections_in is not None:
            sections += " (a component's sections with that component)"
        rows.append(
            (
                name,
                spec.target or "the artifact's",
                sections,
                ", ".join(spec.meta_learns) or "-",
                spec.meta_step or "-",
                _META_SET[spec.meta_set],
                spec.summary,
            )
        )
    return rows


def markdown(target: Target | None = None) -> str:
    """The method table in Markdown (``slem methods --markdown``; ``docs/runs.md``)."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(target)]
    return "\n".join(lines)


def _load_builtin() -> None:
    if not METHODS:
        from slem.train import builtin_methods  # noqa: F401 (registers the built-in methods)


def target_error(spec: MethodSpec, task: Task) -> SlemError:
    """The one-line refusal of a method whose target does not fit ``task`` (rule 7)."""
    if spec.target == "regression":
        return SlemError(
            f"method {spec.name} is for regression targets, but '{task.name}' has "
            f"{task.n_classes} classes; use a classification method (erm, gce, mwnet, ...)"
        )
    return SlemError(
        f"method {spec.name} needs class labels, but '{task.name}' is a regression "
        f"task; use method {', '.join(method_names('regression'))}"
    )


def make_trainer(
    config: TrainConfig,
    task: Task,
    model: nn.Module | None = None,
    methodology: Methodology | None = None,
    callbacks: Sequence[Callback] = (),
) -> Trainer:
    """The right trainer for ``config.method`` (and, for apply, the methodology's kind) on
    ``task``; ``config.data`` may be left out (the task is given). ``model``: your own
    ``nn.Module`` mapping a batch of inputs to ``(batch, n_classes)`` logits (default: built
    from ``config.model``).

    Raises:
        SlemError: the method does not fit the task (or needs a meta set it lacks), or the
            configuration cannot learn (:mod:`slem.train.validity`).
    """
    from slem.train.validity import check_methodology

    spec = method_spec(config)
    check_fits(config, task, methodology)
    needs = spec.needs_meta_set(config)
    if needs is not None and config.data is None and task.meta is None:
        raise SlemError(
            f"{needs} and task '{task.name}' has none: give it one (Task.from_arrays(..., "
            "x_meta=..., y_meta=...) or meta_per_class=10)"
            + (", or use meta.objective dac or selected" if spec.meta_set == "objective" else "")
        )
    trainer = build_trainer(config, task, model, methodology, callbacks)
    if trainer.methodology is not None and spec.is_meta:
        check_methodology(config, sum(p.numel() for p in trainer.methodology.parameters()))
    return trainer
