"""One meta step: :class:`MetaStep`, the trainers' caller of :func:`slem.bilevel.hypergrad`
(the learned optimizer's cross-task meta-training,
:meth:`~slem.train.learned_optimizer.OptimizerMetaTrainer.meta_step`, calls it itself: a fixed
method, ``first_order`` of the trajectory objective, and a clipped meta step).

A meta step of a meta-learned methodology (Shu et al. 2019, Alg. 1, steps 5-7; SLeM paper,
Eq. 6) takes a *virtual* step of the model on the training batch as the methodology sets its
loss, evaluates the outer (meta) objective at the looked-ahead parameters, differentiates it
with respect to the methodology's parameters by ``meta.hypergrad``, and steps the methodology
with its optimizer. The trainers (classification, regression, bundles) and the plug-in
:class:`~slem.train.MetaWeighting` build the bilevel problem (their inner and outer loss); this
object does the rest the same way for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from slem.bilevel import (
    SGD,
    BilevelProblem,
    Hypergrad,
    InnerOptimizer,
    WeightedProblem,
    from_torch,
    hypergrad,
    task_hypergrad,
)
from slem.bilevel.fast import Reduce
from slem.train.config import MetaConfig


def make_meta_optimizer(params: Any, meta: MetaConfig) -> torch.optim.Optimizer:
    """The methodology's optimizer as ``meta`` says: Adam (optionally AMSGrad) or SGD with
    momentum (optionally Nesterov), at ``meta.lr`` with ``meta.weight_decay``."""
    if meta.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=meta.lr,
            momentum=meta.momentum,
            nesterov=meta.nesterov and meta.momentum > 0,
            weight_decay=meta.weight_decay,
        )
    return torch.optim.Adam(
        params, lr=meta.lr, weight_decay=meta.weight_decay, amsgrad=meta.amsgrad
    )


def virtual_step_of(
    optimizer: torch.optim.Optimizer, params: dict[str, Tensor], kind: str, lr: Any = None
) -> tuple[InnerOptimizer, Any]:
    """The virtual step of a meta step and its state: ``kind`` ``optimizer``, the step
    ``optimizer`` will take (:func:`~slem.bilevel.from_torch`); ``sgd``, the plain step
    ``theta - lr * grad``. ``lr``: a float or a function of the hyperparameters (default: the
    optimizer's current rate)."""
    if kind == "sgd":
        return SGD(lr=optimizer.param_groups[0]["lr"] if lr is None else lr), None
    return from_torch(optimizer, params, lr)


def hypergrad_options(
    hypergrad_method: str, optimizer: torch.optim.Optimizer, **fast: Any
) -> dict[str, Any]:
    """The options a meta step passes to :func:`~slem.bilevel.hypergrad` for
    ``hypergrad_method``:
    ``fast`` (the lookahead fast path's ``jvp_mode``, ``keep_graph``, ``live_forward``) for
    ``lookahead``; for ``implicit`` five Neumann terms at the optimizer's current rate."""
    if hypergrad_method == "implicit":
        return {"solver": "neumann", "alpha": optimizer.param_groups[0]["lr"], "iterations": 5}
    return dict(fast) if hypergrad_method == "lookahead" else {}


def _finite(value: Tensor, what: str) -> None:
    from slem.train.guard import NonFiniteLoss

    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLoss(f"the {what} became non-finite; lower optim.lr or meta.lr")


class MetaStep:
    """The meta step of one methodology.

    Args:
        meta: the ``meta`` section: ``hypergrad`` (the method), ``virtual_step``
            (``optimizer``: the real optimizer's own update; ``sgd``: ``theta - lr * grad``),
            ``jvp_mode``, and the methodology optimizer's settings.
        optimizer: the model's real optimizer (the virtual step reads its rate and state);
            None for a meta step over task batches (:meth:`task_hypergradient`), whose inner
            optimizer is the problem's own.
        hyper: the methodology's parameters the meta step learns, by name (the
            hyperparameters of every bilevel problem built here).
        check_finite: ``(tensor, what)`` raising on NaN or infinity (default: a plain
            :class:`~slem.train.trainer.NonFiniteLoss`).
        observers: called with every :class:`~slem.bilevel.Hypergrad` (statistics,
            callbacks).
    """

    def __init__(
        self,
        meta: MetaConfig,
        optimizer: torch.optim.Optimizer | None,
        hyper: Mapping[str, nn.Parameter],
        check_finite: Callable[[Tensor, str], None] = _finite,
        observers: Iterable[Callable[[Hypergrad], None]] = (),
    ) -> None:
        self.meta = meta
        self.optimizer = optimizer
        self.hyper: dict[str, Tensor] = dict(hyper)
        self.meta_optimizer = make_meta_optimizer(list(self.hyper.values()), meta)
        self.check_finite = check_finite
        self.observers = list(observers)

    @property
    def method(self) -> str:
        """The hypergradient method (``meta.hypergrad``)."""
        return self.meta.hypergrad

    @property
    def fast(self) -> bool:
        """Lookahead: a :class:`~slem.bilevel.WeightedProblem` takes the structured fast path,
        whose forward pass the real step may reuse."""
        return self.meta.hypergrad == "lookahead"

    @property
    def real_optimizer(self) -> torch.optim.Optimizer:
        """The model's real optimizer (a meta step over task batches has none)."""
        assert self.optimizer is not None, "this meta step runs over task batches"
        return self.optimizer

    def virtual_optimizer(
        self, params: dict[str, Tensor], lr: float | Any = None
    ) -> tuple[InnerOptimizer, Any]:
        """The differentiable update of the virtual step and its state (see
        :func:`virtual_step_of`); ``lr``: a float or a function of the hyperparameters."""
        return virtual_step_of(self.real_optimizer, params, self.meta.virtual_step, lr)

    def problem(
        self,
        params: dict[str, Tensor],
        inner_loss: Callable[..., Tensor],
        outer_loss: Callable[..., Tensor],
        lr: float | Any = None,
    ) -> BilevelProblem:
        """A generic bilevel problem over :attr:`hyper`: one virtual step on ``inner_loss``
        ``(params, hyper, batch) -> scalar``, then ``outer_loss``."""
        opt, state = self.virtual_optimizer(params, lr)
        return BilevelProblem(
            params, self.hyper, inner_loss, outer_loss, opt, optimizer_state=state
        )

    def weighted_problem(
        self,
        params: dict[str, Tensor],
        per_sample: Callable[..., Any],
        weights: Callable[..., Tensor],
        outer_loss: Callable[..., Tensor],
        reduce: Reduce | None = None,
    ) -> WeightedProblem:
        """A sample-weighting problem over :attr:`hyper` (inner loss ``mean(w * losses)``),
        whose lookahead hypergradient takes the fast path (:func:`~slem.bilevel.lookahead`);
        ``reduce``: data-parallel over ranks (see :class:`~slem.bilevel.WeightedProblem`)."""
        opt, state = self.virtual_optimizer(params)
        return WeightedProblem(
            params,
            self.hyper,
            per_sample,
            weights,
            outer_loss,
            opt,
            optimizer_state=state,
            reduce=reduce,
        )

    def hypergradient(
        self,
        problem: BilevelProblem,
        inner_batch: Any,
        outer_batch: Any,
        steps: int | None = None,
        **fast: Any,
    ) -> Hypergrad:
        """``hypergrad(problem, meta.hypergrad)``, checked finite and passed to every observer.
        ``steps``: the virtual steps of ``unrolled`` / ``first_order`` (default one; 0 for
        ``first_order`` differentiates at the current parameters, as first-order DARTS).
        ``fast``: the lookahead fast path's options (``keep_graph``, ``live_forward``;
        ``jvp_mode`` comes from ``meta``), ignored by the other methods."""
        options = hypergrad_options(
            self.method, self.real_optimizer, jvp_mode=self.meta.jvp_mode, **fast
        )
        if steps is not None:
            options["steps"] = steps
        result = hypergrad(
            problem, self.method, inner_batch=inner_batch, outer_batch=outer_batch, **options
        )
        return self._observed(result)

    def task_hypergradient(
        self, problem: BilevelProblem, inner_batch: Any, outer_batch: Any, **options: Any
    ) -> Hypergrad:
        """The hypergradient averaged over a batch of tasks,
        ``task_hypergrad(problem, meta.hypergrad)`` (:func:`~slem.bilevel.task_hypergrad`:
        ``steps``, ``vectorize``, ``checkpoint``, the implicit solver's options), checked
        finite and passed to every observer."""
        result = task_hypergrad(
            problem, self.method, inner_batch=inner_batch, outer_batch=outer_batch, **options
        )
        return self._observed(result)

    def _observed(self, result: Hypergrad) -> Hypergrad:
        for g in result.grads.values():
            self.check_finite(g, "hypergradient")
        for observe in self.observers:
            observe(result)
        return result

    def update(self, result: Hypergrad) -> None:
        """One step of the methodology's optimizer on ``result``'s gradients."""
        step_hyper(self.meta_optimizer, self.hyper, result.grads)

    def __call__(
        self,
        problem: BilevelProblem,
        inner_batch: Any,
        outer_batch: Any,
        steps: int | None = None,
        **fast: Any,
    ) -> Hypergrad:
        """:meth:`hypergradient`, then :meth:`update`."""
        result = self.hypergradient(problem, inner_batch, outer_batch, steps, **fast)
        self.update(result)
        return result


def step_hyper(
    optimizer: torch.optim.Optimizer, hyper: Mapping[str, Tensor], grads: Mapping[str, Tensor]
) -> None:
    """One step of a methodology's ``optimizer`` on ``grads`` (by the names of ``hyper``):
    :meth:`MetaStep.update`, and the shared update of cross-task meta-training."""
    optimizer.zero_grad(set_to_none=True)
    for name, g in grads.items():
        target = hyper[name]
        target.grad = g.to(target.dtype).clone()
    optimizer.step()


@dataclass
class PendingStep:
    """A meta step between its two phases (:class:`PhasedMetaStep`): the hypergradient
    ``result``, the batch ``(x, y)``, the start time, and what the trainer's real step needs
    of phase one (each trainer fills the fields it uses).

    Attributes:
        params: the inner parameters of the virtual step.
        pseudo: the teacher's pseudo-labels (label correction).
        reuse: the real step reuses phase one's forward pass (the fast path).
        loss: the batch's training loss (a learned schedule reads it for its rate).
        grads: the real step's gradient, computed in phase one (a learned schedule's).
        idx: the batch's training-sample indices (a weighting rule's loss histories).
        terms: the real step's per-sample terms with their graph, from phase one's forward
            (the fast path's kept forward, or the head split's; None: the real step runs its
            own forward).
    """

    result: Hypergrad
    x: Tensor
    y: Tensor
    start: float
    params: dict[str, Tensor] = field(default_factory=dict)
    pseudo: Tensor | None = None
    reuse: bool = False
    loss: Tensor | None = None
    grads: dict[str, Tensor] | None = None
    idx: Tensor | None = None
    terms: Any = None


@runtime_checkable
class PhasedMetaStep(Protocol):
    """A trainer whose meta step comes in two phases, so that cross-task meta-training
    (:class:`~slem.train.cross_task.CrossTaskTrainer`) can average the hypergradients of
    several episodes before the shared methodology moves, and step each episode with it after.

    Its own ``meta_train_step`` is :meth:`meta_hypergradient`, ``meta_step.update`` of the
    result, then :meth:`real_step`: one episode alone is exactly the per-task method.

    Attributes:
        meta_step: its :class:`MetaStep`: the hyperparameters it learns (``hyper``, by name)
            and the settings of their optimizer (``meta``); None when it learns nothing.
    """

    meta_step: MetaStep | None

    @property
    def meta_step_due(self) -> bool:
        """The next training step is a meta step."""
        ...

    def meta_hypergradient(self, x: Tensor, y: Tensor, idx: Tensor | None = None) -> PendingStep:
        """Phase one on the batch ``(x, y)``: the hypergradient of the meta objective at the
        current methodology; nothing moves (neither the model nor the methodology)."""
        ...

    def real_step(self, pending: PendingStep) -> dict[str, float]:
        """Phase two: the real training step with the methodology as it stands now (after
        the meta update); the step's statistics (``loss``, ``meta_loss``, ...)."""
        ...


def phased_meta_step(
    trainer: PhasedMetaStep, x: Tensor, y: Tensor, idx: Tensor | None = None
) -> dict[str, float]:
    """A trainer's whole meta step on the batch ``(x, y)`` of training samples ``idx`` (its
    ``meta_train_step``): phase one, one step of its own methodology optimizer
    (:meth:`MetaStep.update`), phase two."""
    pending = trainer.meta_hypergradient(x, y, idx)
    assert trainer.meta_step is not None
    trainer.meta_step.update(pending.result)
    return trainer.real_step(pending)


def hypergradient_norm(result: Hypergrad) -> float:
    """The Euclidean norm of all of ``result``'s gradients, in float64."""
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in result.grads.values()))
