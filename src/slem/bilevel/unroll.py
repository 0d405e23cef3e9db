"""Inner training as a pure function of the hyperparameters, for torch.func to transform.

``objective(hyper) = outer_loss(theta_K(hyper), hyper)`` where ``theta_K`` is ``K`` steps of
the differentiable inner optimizer. Reverse mode (``torch.func.grad``) of it is ITD / the
unrolled hypergradient, forward mode (``torch.func.jvp``) is Franceschi et al.'s forward
hypergradient, and with the inner gradients detached it is the first-order approximation.

With trajectory weights ``w_0..w_K`` the objective is the weighted sum over the iterates
instead (the meta loss of learned optimizers, Andrychowicz et al. 2016, eq. 3)::

    objective(hyper) = sum_{t<K} w_t * outer_loss(theta_t, hyper, batch_t)
                       + w_K * outer_loss(theta_K, hyper, outer_batch)

where ``batch_t`` is the batch of step ``t`` (the one whose gradient moves ``theta_t``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp

from slem.bilevel.optim import State
from slem.bilevel.problem import Batch, BilevelProblem, Params
from slem.errors import SlemError


def detach_tree(tree: Any) -> Any:
    """Detach every tensor in nested dicts / lists / tuples (optimizer states, params)."""
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: detach_tree(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(detach_tree(v) for v in tree)
    return tree


class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


#: default of ``inner_batch`` (``None`` is a valid batch when the data lives in the losses)
NOT_GIVEN: Any = _NotGiven()


def schedule(
    inner_batch: Batch, inner_batches: Sequence[Batch] | None, steps: int | None, least: int = 1
) -> list[Batch]:
    """The batch of every inner step: ``inner_batches`` in order (cycled to ``steps``), or one
    ``inner_batch`` reused ``steps`` times (default 1). ``least``: the fewest steps allowed
    (0 where the method is defined without an inner step)."""
    if (inner_batch is NOT_GIVEN) == (inner_batches is None):
        raise SlemError("give exactly one of inner_batch (reused every step) or inner_batches")
    seq = [inner_batch] if inner_batches is None else list(inner_batches)
    if not seq:
        raise SlemError("inner_batches is empty")
    n = steps if steps is not None else (len(seq) if inner_batches is not None else 1)
    if n < least:
        raise SlemError(f"steps must be at least {least}, got {n}")
    return [seq[k % len(seq)] for k in range(n)]


def initial_state(problem: BilevelProblem, params: Params) -> State:
    state = problem.optimizer_state
    return detach_tree(state) if state is not None else problem.optimizer.init(params)


def inner_grads(
    problem: BilevelProblem, params: Params, hyper: Params, batch: Batch, stop_gradient: bool
) -> Params:
    """``grad L_in(params, hyper, batch)``, differentiable (torch.func), or with
    ``stop_gradient`` a constant: plain autograd at detached copies of the inputs (so no
    graph is kept; only outside torch.func transforms, where first-order methods run)."""
    if not stop_gradient:
        g: Params = grad(problem.inner_loss)(params, hyper, batch)
        return g
    leaves = {k: t.detach().requires_grad_(True) for k, t in params.items()}
    with torch.enable_grad():
        loss = problem.inner_loss(leaves, detach_tree(hyper), batch)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise SlemError(f"inner_loss must return a scalar tensor, got {shape}")
        found = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {
        k: torch.zeros_like(t) if d is None else d
        for (k, t), d in zip(leaves.items(), found, strict=True)
    }


def run_steps(
    problem: BilevelProblem,
    params: Params,
    state: State,
    hyper: Params,
    batches: Sequence[Batch],
    stop_gradient: bool = False,
) -> tuple[Params, State]:
    """``len(batches)`` differentiable optimizer steps on the inner loss."""
    for batch in batches:
        g = inner_grads(problem, params, hyper, batch, stop_gradient)
        params, state = problem.optimizer.update(params, g, state, hyper)
    return params, state


def check_trajectory_weights(weights: Sequence[float] | None, steps: int) -> list[float] | None:
    """Check ``weights`` for a ``steps``-step unroll: one finite float per iterate
    ``theta_0..theta_K`` (``K + 1`` of them), not all 0; None stays None.

    Raises:
        SlemError: another length, a non-finite weight, or all weights 0 (one line).
    """
    if weights is None:
        return None
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise SlemError("trajectory_weights must be a sequence of numbers") from None
    if len(ws) != steps + 1:
        raise SlemError(
            f"trajectory_weights needs {steps + 1} weights (theta_0..theta_{steps} of {steps} "
            f"inner steps), got {len(ws)}"
        )
    if not all(math.isfinite(w) for w in ws):
        raise SlemError(f"trajectory_weights must be finite, got {ws}")
    if not any(ws):
        raise SlemError("trajectory_weights are all 0: the objective would be constant")
    return ws


def _scalar(loss: Tensor) -> Tensor:
    if loss.dim() != 0:
        raise SlemError(f"outer_loss must return a scalar, got shape {tuple(loss.shape)}")
    return loss


def _plus(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


def run_trajectory(
    problem: BilevelProblem,
    params: Params,
    state: State,
    hyper: Params,
    batches: Sequence[Batch],
    weights: Sequence[float],
    stop_gradient: bool = False,
) -> tuple[Params, State, Tensor | None]:
    """:func:`run_steps`, also summing ``weights[t] * outer_loss(theta_t, hyper, batches[t])``
    over the iterates the steps start from (``theta_0`` = ``params``); a weight of 0 skips its
    loss. Returns the final params and state and the sum (None when every weight is 0)."""
    total: Tensor | None = None
    for w, batch in zip(weights, batches, strict=True):
        if w != 0.0:
            total = _plus(total, w * _scalar(problem.outer_loss(params, hyper, batch)))
        g = inner_grads(problem, params, hyper, batch, stop_gradient)
        params, state = problem.optimizer.update(params, g, state, hyper)
    return params, state, total


def warm_start(
    problem: BilevelProblem,
    hyper: Params,
    batches: Sequence[Batch],
    weights: Sequence[float] | None = None,
) -> tuple[Params, State, Tensor | None]:
    """Run ``batches`` steps without any graph (the untracked prefix of truncated unrolling).

    With ``weights`` (one per step) also the prefix's share of the trajectory objective, a
    constant (None without weights or when they are all 0)."""
    hyper = detach_tree(hyper)
    params = detach_tree(problem.start(hyper))
    state = initial_state(problem, params)
    if not batches:
        return params, state, None
    ws = [0.0] * len(batches) if weights is None else weights
    params, state, total = run_trajectory(
        problem, params, state, hyper, batches, ws, stop_gradient=True
    )
    prefix = None if total is None else total.detach()
    return detach_tree(params), detach_tree(state), prefix


def tensor_leaves(tree: Any) -> list[Tensor]:
    """The tensors of nested dicts / lists / tuples, in a fixed order (an optimizer state's
    tensors, which torch.func can return as aux; its ints and Nones it cannot)."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensor_leaves(v)]
    if isinstance(tree, list | tuple):
        return [t for v in tree for t in tensor_leaves(v)]
    return []


def with_leaves(tree: Any, leaves: Iterator[Tensor]) -> Any:
    """``tree`` with its tensors replaced, in :func:`tensor_leaves` order, by ``leaves``."""
    if isinstance(tree, Tensor):
        return next(leaves)
    if isinstance(tree, dict):
        return {k: with_leaves(v, leaves) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(with_leaves(v, leaves) for v in tree)
    return tree


Objective = Callable[[Params], tuple[Tensor, tuple[Params, list[Tensor]]]]


def make_objective(
    problem: BilevelProblem,
    batches: Sequence[Batch],
    outer_batch: Batch,
    stop_gradient: bool = False,
    start: tuple[Params, State] | None = None,
    weights: Sequence[float] | None = None,
    prefix: Tensor | None = None,
    final_state: list[State] | None = None,
) -> Objective:
    """``hyper -> (objective, (final inner params, the final state's tensors))``, pure, for
    torch.func transforms.

    With ``start`` the unroll begins from given (detached) params and state; otherwise from
    ``problem.start(hyper)``, which keeps MAML's dependence of the initialization on ``hyper``.
    The objective is ``outer_loss(theta_K, hyper, outer_batch)``, or with ``weights``
    (``len(batches) + 1`` of them, checked by :func:`check_trajectory_weights`) the trajectory
    objective of the module docstring, plus the constant ``prefix`` (the untracked steps'
    share under truncation). The final state's tensors are returned as a flat list (aux may
    hold tensors only); ``final_state``, when given, receives the state itself, whose
    structure (and ints) :func:`with_leaves` refills with them.
    """

    def objective(hyper: Params) -> tuple[Tensor, tuple[Params, list[Tensor]]]:
        if start is not None:
            params, state = start
        else:
            params = problem.start(hyper)
            if problem.initial_params is None:
                params = detach_tree(params)
            state = initial_state(problem, params)
        if weights is None:
            params, state = run_steps(problem, params, state, hyper, batches, stop_gradient)
            loss = _scalar(problem.outer_loss(params, hyper, outer_batch))
        else:
            params, state, total = run_trajectory(
                problem, params, state, hyper, batches, weights[:-1], stop_gradient
            )
            if weights[-1] != 0.0:
                final = _scalar(problem.outer_loss(params, hyper, outer_batch))
                total = _plus(total, weights[-1] * final)
            if prefix is not None:  # a constant: torch.func gives it a zero gradient
                total = prefix if total is None else prefix + total
            if total is None:
                raise SlemError("trajectory_weights are all 0: the objective would be constant")
            loss = total
        if final_state is not None:
            final_state.append(state)
        return loss, (params, tensor_leaves(state))

    return objective


def flat_dim(tree: Params) -> int:
    return sum(int(t.numel()) for t in tree.values())


def basis(tree: Params, index: int) -> Params:
    """The ``index``-th standard basis vector in the shape of ``tree``."""
    out: Params = {}
    offset = 0
    for name, t in tree.items():
        e = torch.zeros_like(t)
        if offset <= index < offset + t.numel():
            e.view(-1)[index - offset] = 1.0
        out[name] = e
        offset += int(t.numel())
    return out


def pullback(fn: Callable[..., Any], *primals: Any) -> Callable[[Any], tuple[Any, ...]]:
    """``torch.func.vjp`` without its aux variant: returns only the pull-back function."""
    return vjp(fn, *primals)[1]


def push_forward(
    fn: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Any, Any]:
    """``torch.func.jvp`` without its aux variant: ``(fn(*primals), directional derivative)``."""
    out = jvp(fn, primals, tangents)
    return out[0], out[1]
