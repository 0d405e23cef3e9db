"""Which meta-learning configurations can learn: the validity table, checked before training.

A configuration is a cell of

    methodology (method) x hypergradient method (meta.hypergrad) x inner optimizer
    (optim.optimizer, meta.virtual_step) x meta objective (meta.objective) x task type,

plus the options that only one path reads (``meta.order``, ``meta.jvp_mode``,
``meta.scope``). A cell is
invalid when the methodology provably learns nothing in it, or when a setting the user chose
would be silently ignored. :func:`check_config` refuses the invalid cells of a config (called
by :class:`~slem.train.config.TrainConfig`'s validation, so ``slem train`` stops with one line
and exit code 2 before anything is written); :func:`check_task` adds the task type once the
task is known; :func:`table` lists every cell with its reason (``docs/validity.md`` is
generated from it). Each rule is derived below and tested cell by cell
(``tests/test_validity.py``: every valid cell gives a finite, non-zero hypergradient; every
refused cell is refused with its message, and the mathematically empty ones are shown to give
an exactly zero hypergradient when forced).

Rules (why):

1. ``first_order`` drops every second-order term. A hyperparameter that enters only the inner
   *loss* (sample weights of MW-Net / CMW-Net / CMW-Net-SL, the loss adjuster's per-sample
   parameters, the transition matrix, HW-Net's weights) reaches the inner parameters only
   through the inner gradient, so its first-order hypergradient is exactly 0 (Finn et al.
   2017; Liu et al. 2019, eq. 7 with the second term dropped). Valid only for
   hyperparameters of the update itself (a learning rate: ``joint`` with only
   ``lr_schedule``).
2. ``implicit`` differentiates the inner *optimum* (Lorraine et al. 2020): a learning rate does
   not move a stationary point, so a learned rate's hypergradient is exactly 0
   (``lr_schedule``, ``joint`` with ``lr_schedule``).
3. ``lr_schedule`` (MLR-SNet) meta-learns a rate: its meta step is a
   :class:`~slem.bilevel.RateProblem` on its own meta batches (``schedule.*``), which takes
   ``meta.hypergrad`` (``lookahead``, the exact one-step hypergradient with no second
   derivative, by default) but not ``meta.order``, ``meta.jvp_mode`` or
   ``meta.virtual_step`` (fast-path and virtual-step options it would ignore: refused).
   ``learned_optimizer``'s meta step is fixed: the engine's ``first_order`` hypergradient of
   the trajectory objective over a truncated unroll of the LSTM optimizer
   (``learned_optimizer.unroll``): any of the four other than the default would be ignored,
   so it is refused.
4. ``meta.order: lagged`` and ``meta.jvp_mode: difference`` are options of the ``lookahead``
   fast path for sample weighting (mwnet, cmwnet, cmwnet_sl); elsewhere they would be ignored.
   ``meta.scope: head`` (the virtual step moves only the output layer) is an option of the
   same methods' meta step (any hypergradient method); it cannot go with ``meta.order:
   lagged``, which would make the head-only virtual step the real step and never train the
   rest of the model.
5. Inner optimizer: the virtual step is the real optimizer's update (``meta.virtual_step:
   optimizer``), available for SGD and Adam; RMSprop needs ``meta.virtual_step: sgd`` (the
   plain step of the official MW-Net code). A learned learning rate (``lr_schedule``, ``joint``
   with ``lr_schedule``) is an SGD rate: ``optim.optimizer: sgd``.
6. ``meta.objective: selected`` picks low-loss samples *per class*: classification only
   (not ``hwnet``).
7. Task type: regression methods (mse, l1, huber, hwnet) need a numeric target; every other
   method needs class labels.
8. ``forward`` takes one forward-mode pass per hyperparameter: at most 1024 (MW-Net's 1-100-1
   net has 301, CMW-Net's 503; a transition net that reads the inputs has thousands).
   Checked once the methodology is built (:func:`check_methodology`).
9. ``meta.warmup_epochs`` must be below ``optim.epochs``: otherwise the run takes no meta
   step at all (checked with the config, outside the table).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from slem.train.methods import get_method, method_names

if TYPE_CHECKING:
    from slem.data.task import Task
    from slem.train.config import TrainConfig

HYPERGRADS = ("lookahead", "unrolled", "forward", "implicit", "finite_difference", "first_order")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
VIRTUAL_STEPS = ("optimizer", "sgd")
OBJECTIVES = ("clean", "dac", "clean+dac", "selected")
TASK_TYPES = ("classification", "regression")

#: methods whose meta step is ``slem.train`` 's engine call, set by ``meta.*``
ENGINE_METHODS = tuple(n for n in method_names() if get_method(n).engine)
#: meta-learned methods with their own, fixed meta step (meta.* does not apply)
OWN_METHODS = tuple(n for n in method_names() if get_method(n).own_meta_step)
REGRESSION = tuple(method_names("regression"))
#: methods whose meta step is a WeightedProblem (lookahead's fast path: meta.order, jvp_mode)
FAST_PATH = tuple(n for n in method_names() if get_method(n).weighted_problem)
#: defaults of the meta-step options that only some methods read
META_DEFAULTS = {
    "hypergrad": "lookahead",
    "order": "mwnet",
    "jvp_mode": "forward",
    "virtual_step": "optimizer",
    "scope": "model",
}


@dataclass(frozen=True)
class Cell:
    """One configuration of the table. ``components``: ``joint``'s parts (else empty)."""

    method: str
    hypergrad: str = "lookahead"
    optimizer: str = "sgd"
    virtual_step: str = "optimizer"
    objective: str = "clean"
    task_type: str = "classification"
    order: str = "mwnet"
    jvp_mode: str = "forward"
    scope: str = "model"
    components: tuple[str, ...] = ()


def _either(names: tuple[str, ...]) -> str:
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def _learns_rate(cell: Cell) -> bool:
    return "lr_schedule" in cell.components or get_method(cell.method).meta_step == "rate"


def _loss_hyper(cell: Cell) -> bool:
    """Whether the methodology has hyperparameters that enter only the inner loss."""
    if cell.components:
        return any(c != "lr_schedule" for c in cell.components)
    return cell.method in ENGINE_METHODS


def _zero_hypergradient(cell: Cell) -> str | None:
    """Rules 1 and 2: the hypergradient method gives an exactly zero hypergradient."""
    if cell.hypergrad == "first_order" and _loss_hyper(cell):
        return (
            f"meta.hypergrad first_order cannot learn method {cell.method}: its "
            "hyperparameters act only through the inner gradient, whose first-order "
            "hypergradient is exactly 0"
        )
    if cell.hypergrad == "implicit" and _learns_rate(cell):
        return (
            "meta.hypergrad implicit cannot learn joint's lr_schedule: a learning rate does "
            "not move the inner optimum, so its implicit hypergradient is exactly 0"
        )
    return None


def _task_reason(cell: Cell, task: str = "the task", classes: str = "class labels") -> str | None:
    """Rule 7: the method does not fit the task's type."""
    m = cell.method
    regression = m in REGRESSION
    if cell.task_type == "regression" and not regression:
        return (
            f"method {m} needs class labels, but {task} is a regression task; use a "
            "regression method (mse, l1, huber, hwnet)"
        )
    if cell.task_type == "classification" and regression:
        return (
            f"method {m} is for regression targets, but {task} has {classes}; use a "
            "classification method (erm, gce, mwnet, ...)"
        )
    return None


def reason(cell: Cell) -> str | None:
    """Why ``cell`` is refused (one sentence naming the fields and the valid choices), or
    None when it is valid (rule 8, the size limit of forward mode, is checked once the
    methodology is built: :func:`check_methodology`)."""
    m = cell.method
    why = _task_reason(cell)
    if why is not None:
        return why
    if m in OWN_METHODS:
        rate = get_method(m).meta_step == "rate"
        for name, default in META_DEFAULTS.items():
            value = getattr(cell, name)
            if value != default and not (rate and name == "hypergrad"):
                if rate:
                    return (
                        f"meta.{name} {value} would be ignored: method {m}'s meta step is a "
                        "learning-rate problem on its own meta set (schedule.*), not the "
                        f"sample-weighting fast path; remove meta.{name}"
                    )
                return (
                    f"meta.{name} {value} would be ignored: method {m}'s meta step is fixed "
                    f"(first_order over a truncated unroll, learned_optimizer.unroll); remove "
                    f"meta.{name}"
                )
        if rate and cell.optimizer != "sgd":
            return (
                f"method {m} learns an SGD learning rate: set optim.optimizer sgd "
                f"(not {cell.optimizer})"
            )
        if rate and cell.hypergrad == "implicit":
            return (
                f"meta.hypergrad implicit cannot learn method {m}: a learning rate does not "
                "move the inner optimum, so its implicit hypergradient is exactly 0; use "
                "lookahead, unrolled, forward, finite_difference or first_order"
            )
        return None
    if m not in ENGINE_METHODS:
        return None  # baselines and apply have no meta step; the meta section is unused
    valid_hg = ", ".join(
        h for h in HYPERGRADS if _zero_hypergradient(replace(cell, hypergrad=h)) is None
    )
    why = _zero_hypergradient(cell)
    if why is not None:
        return f"{why}; use {valid_hg}"
    if cell.order != "mwnet" and not (m in FAST_PATH and cell.hypergrad == "lookahead"):
        return (
            f"meta.order {cell.order} reuses the lookahead fast path's virtual step as the real "
            f"step: it needs meta.hypergrad lookahead and method {_either(FAST_PATH)} "
            f"(got {cell.hypergrad}, {m}); remove meta.order"
        )
    if cell.jvp_mode != "forward" and not (m in FAST_PATH and cell.hypergrad == "lookahead"):
        return (
            f"meta.jvp_mode {cell.jvp_mode} is an option of the lookahead fast path: it needs "
            f"meta.hypergrad lookahead and method {_either(FAST_PATH)} (got "
            f"{cell.hypergrad}, {m}); remove meta.jvp_mode"
        )
    if cell.scope != "model" and m not in FAST_PATH:
        return (
            f"meta.scope {cell.scope} splits the model for a sample-weighting meta step: it "
            f"needs method {_either(FAST_PATH)} (got {m}); remove meta.scope"
        )
    if cell.scope != "model" and cell.order == "lagged":
        return (
            f"meta.scope {cell.scope} with meta.order lagged would make the virtual step, which "
            "moves only the output layer, the real step: the rest of the model would never "
            "train; use meta.order mwnet"
        )
    if _learns_rate(cell) and cell.optimizer != "sgd":
        return (
            f"joint's lr_schedule learns an SGD learning rate: set optim.optimizer sgd "
            f"(not {cell.optimizer})"
        )
    if cell.optimizer == "rmsprop" and cell.virtual_step == "optimizer":
        return (
            "the virtual step has no differentiable RMSprop update: set optim.optimizer sgd or "
            "adam, or meta.virtual_step sgd (the plain step of the official MW-Net code)"
        )
    if cell.objective == "selected" and cell.task_type == "regression":
        return (
            "meta.objective selected picks low-loss samples per class: for regression use "
            "meta.objective clean, dac or clean+dac"
        )
    return None


def cell_of(config: TrainConfig, task_type: str | None = None) -> Cell:
    """The cell of a config (``task_type`` from the method when the task is not known)."""
    method = config.method
    spec = get_method(method)
    if task_type is None:
        task_type = "regression" if spec.target == "regression" else "classification"
    meta = config.meta
    return Cell(
        method=method,
        hypergrad=meta.hypergrad,
        optimizer=config.optim.optimizer,
        virtual_step=meta.virtual_step,
        objective=meta.objective,
        task_type=task_type,
        order=meta.order,
        jvp_mode=meta.jvp_mode,
        scope=meta.scope,
        components=tuple(spec.components_of(config)) if spec.components is not None else (),
    )


def check_config(config: TrainConfig) -> None:
    """Refuse an invalid cell (task type from the method).

    Raises:
        ValueError: one line naming the fields and the valid choices (pydantic turns it into
            the config's validation error).
    """
    why = reason(cell_of(config))
    if why is not None:
        raise ValueError(why)
    warmup, epochs = config.meta.warmup_epochs, config.optim.epochs
    if config.method in ENGINE_METHODS and warmup >= epochs:
        raise ValueError(
            f"meta.warmup_epochs ({warmup}) is not below optim.epochs ({epochs}): method "
            f"{config.method} would train plain epochs only and never take a meta step; lower "
            "meta.warmup_epochs (e.g. 0) or raise optim.epochs"
        )


def check_task(config: TrainConfig, task: Task) -> None:
    """Refuse a config whose method does not fit the task's type (rule 7).

    Raises:
        SlemError: one line naming the method, the task and the methods that fit.
    """
    from slem.errors import SlemError

    task_type = "classification" if task.is_classification else "regression"
    why = _task_reason(cell_of(config, task_type), f"'{task.name}'", f"{task.n_classes} classes")
    if why is not None:
        raise SlemError(why)


#: forward mode takes one pass per hyperparameter (``slem.bilevel.forward``'s limit)
MAX_FORWARD_DIRECTIONS = 1024


def check_methodology(config: TrainConfig, n_hyper: int) -> None:
    """Rule 8, once the methodology is built: ``meta.hypergrad forward`` takes one
    forward-mode pass per hyperparameter, at most :data:`MAX_FORWARD_DIRECTIONS`.

    Raises:
        SlemError: naming the count and the methods that scale.
    """
    from slem.errors import SlemError

    takes_hypergrad = (
        config.method in ENGINE_METHODS or get_method(config.method).meta_step == "rate"
    )
    forward = takes_hypergrad and config.meta.hypergrad == "forward"
    if forward and n_hyper > MAX_FORWARD_DIRECTIONS:
        raise SlemError(
            f"meta.hypergrad forward needs one pass per hyperparameter and method "
            f"{config.method}'s methodology has {n_hyper} (at most "
            f"{MAX_FORWARD_DIRECTIONS}); use lookahead, unrolled or implicit, or a "
            "smaller methodology (meta.hidden)"
        )


def cells() -> Iterator[Cell]:
    """Every cell of the table (joint with each component set of interest)."""
    bundles = [m for m in ENGINE_METHODS if get_method(m).components is not None]
    methods: list[tuple[str, tuple[str, ...]]] = [
        (m, ()) for m in ENGINE_METHODS if m not in bundles
    ]
    for m in bundles:
        methods += [
            (m, ("mwnet", "loss_adjuster", "lr_schedule")),
            (m, ("mwnet", "loss_adjuster")),
            (m, ("lr_schedule",)),
        ]
    methods += [(m, ()) for m in OWN_METHODS]
    for method, components in methods:
        for hg in HYPERGRADS:
            for opt in OPTIMIZERS:
                for vs in VIRTUAL_STEPS:
                    for obj in OBJECTIVES:
                        for tt in TASK_TYPES:
                            yield Cell(method, hg, opt, vs, obj, tt, components=components)


def table() -> list[dict[str, Any]]:
    """Every cell with ``valid`` and ``reason`` (rows for ``docs/validity.md``)."""
    return [{**c.__dict__, "valid": reason(c) is None, "reason": reason(c)} for c in cells()]


def markdown() -> str:
    """The table in compact form: per methodology, the hypergradient methods, inner optimizers
    and objectives that are valid on its task type, and the rules that refuse the rest."""

    def name(c: Cell) -> str:
        return f"{c.method} ({', '.join(c.components)})" if c.components else c.method

    lines = [
        "| methodology | task | valid meta.hypergrad | valid optim.optimizer "
        "(virtual_step optimizer / sgd) | valid meta.objective |",
        "|---|---|---|---|---|",
    ]
    seen: set[tuple[str, str]] = set()
    for c in cells():
        key = (name(c), c.task_type)
        if key in seen:
            continue
        seen.add(key)
        base = Cell(c.method, task_type=c.task_type, components=c.components)
        if c.task_type == "regression" and c.method not in REGRESSION:
            continue
        if c.task_type == "classification" and c.method in REGRESSION:
            continue
        if c.task_type == "regression" and c.method in ENGINE_METHODS:
            base = Cell(c.method, task_type="regression", objective="clean")
        hg = [h for h in HYPERGRADS if reason(replace(base, hypergrad=h)) is None]
        opt_o = [
            o
            for o in OPTIMIZERS
            if reason(replace(base, optimizer=o, virtual_step="optimizer")) is None
        ]
        opt_s = [
            o for o in OPTIMIZERS if reason(replace(base, optimizer=o, virtual_step="sgd")) is None
        ]
        objs = [o for o in OBJECTIVES if reason(replace(base, objective=o)) is None]
        if c.method in OWN_METHODS and get_method(c.method).meta_step == "rate":
            hg_text = ", ".join(hg)
            objs_text = "its own meta set (meta.objective unused)"
            sgd_text = ", ".join(opt_o)
        elif c.method in OWN_METHODS:
            hg_text = "fixed: first_order, trajectory objective (meta.hypergrad stays default)"
            objs_text = "its own meta set (meta.objective unused)"
            sgd_text = ", ".join(opt_o)
        else:
            hg_text = ", ".join(hg)
            objs_text = ", ".join(objs)
            sgd_text = f"{', '.join(opt_o)} / {', '.join(opt_s)}"
        lines.append(f"| {name(c)} | {c.task_type} | {hg_text} | {sgd_text} | {objs_text} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m slem.train.validity > docs/validity.md
    print(
        "# Which meta-learning configurations can learn\n\n"
        "Generated by `python -m slem.train.validity > docs/validity.md` from "
        "`slem.train.validity`; `tests/test_validity.py` checks every cell. A configuration "
        "outside this table is refused when the config is validated (one line naming the "
        "fields and the valid choices, exit code 2), before anything is written; a run whose "
        "hypergradient is exactly 0 in every meta step of an epoch stops with a message.\n\n"
        + markdown()
        + "\n\n## Rules\n"
        + (__doc__ or "").split("Rules (why):", 1)[1]
    )
