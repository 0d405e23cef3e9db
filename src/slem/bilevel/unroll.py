"""Inner training as a pure function of the hyperparameters, for torch.func to transform.

``objective(hyper) = outer_loss(theta_K(hyper), hyper)`` where ``theta_K`` is ``K`` steps of
the differentiable inner optimizer. Reverse mode (``torch.func.grad``) of it is ITD / the
unrolled hypergradient, forward mode (``torch.func.jvp``) is Franceschi et al.'s forward
hypergradient, and with the inner gradients detached it is the first-order approximation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    inner_batch: Batch, inner_batches: Sequence[Batch] | None, steps: int | None
) -> list[Batch]:
    """The batch of every inner step: ``inner_batches`` in order (cycled to ``steps``), or one
    ``inner_batch`` reused ``steps`` times (default 1)."""
    if (inner_batch is NOT_GIVEN) == (inner_batches is None):
        raise SlemError("give exactly one of inner_batch (reused every step) or inner_batches")
    seq = [inner_batch] if inner_batches is None else list(inner_batches)
    if not seq:
        raise SlemError("inner_batches is empty")
    n = steps if steps is not None else (len(seq) if inner_batches is not None else 1)
    if n < 1:
        raise SlemError(f"steps must be at least 1, got {n}")
    return [seq[k % len(seq)] for k in range(n)]


def initial_state(problem: BilevelProblem, params: Params) -> State:
    state = problem.optimizer_state
    return detach_tree(state) if state is not None else problem.optimizer.init(params)


def inner_grads(
    problem: BilevelProblem, params: Params, hyper: Params, batch: Batch, stop_gradient: bool
) -> Params:
    g: Params = grad(problem.inner_loss)(params, hyper, batch)
    return detach_tree(g) if stop_gradient else g


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


def warm_start(
    problem: BilevelProblem, hyper: Params, batches: Sequence[Batch]
) -> tuple[Params, State]:
    """Run ``batches`` steps without any graph (the untracked prefix of truncated unrolling)."""
    hyper = detach_tree(hyper)
    params = detach_tree(problem.start(hyper))
    state = initial_state(problem, params)
    if not batches:
        return params, state
    params, state = run_steps(problem, params, state, hyper, batches, stop_gradient=True)
    return detach_tree(params), detach_tree(state)


def make_objective(
    problem: BilevelProblem,
    batches: Sequence[Batch],
    outer_batch: Batch,
    stop_gradient: bool = False,
    start: tuple[Params, State] | None = None,
) -> Callable[[Params], tuple[Tensor, Params]]:
    """``hyper -> (outer loss, final inner params)``, pure, for torch.func transforms.

    With ``start`` the unroll begins from given (detached) params and state; otherwise from
    ``problem.start(hyper)``, which keeps MAML's dependence of the initialization on ``hyper``.
    """

    def objective(hyper: Params) -> tuple[Tensor, Params]:
        if start is not None:
            params, state = start
        else:
            params = problem.start(hyper)
            if problem.initial_params is None:
                params = detach_tree(params)
            state = initial_state(problem, params)
        params, _ = run_steps(problem, params, state, hyper, batches, stop_gradient)
        loss = problem.outer_loss(params, hyper, outer_batch)
        if loss.dim() != 0:
            raise SlemError(f"outer_loss must return a scalar, got shape {tuple(loss.shape)}")
        return loss, params

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
