"""Every hypergradient method behind one call: ``hypergrad(problem, method=..., ...)``.

Notation: ``theta`` inner parameters, ``phi`` hyperparameters, ``K`` inner steps, ``P`` the
number of inner parameters, ``H`` the number of hyperparameters, and "a step" the cost of one
inner forward + backward.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap

from slem.bilevel import implicit as implicit_solvers
from slem.bilevel.optim import State
from slem.bilevel.problem import Batch, BilevelProblem, Hypergrad, Params, same_randomness
from slem.bilevel.unroll import (
    NOT_GIVEN,
    Objective,
    basis,
    check_trajectory_weights,
    detach_tree,
    flat_dim,
    initial_state,
    inner_grads,
    make_objective,
    pullback,
    push_forward,
    schedule,
    warm_start,
    with_leaves,
)
from slem.errors import SlemError

Method = Callable[..., Hypergrad]

#: the methods that take ``trajectory_weights`` (reverse mode through the whole unroll)
TRAJECTORY_METHODS = ("unrolled", "first_order")


def _hyper(problem: BilevelProblem) -> Params:
    return detach_tree(problem.hyper)


def _reverse(
    problem: BilevelProblem,
    method: str,
    batches: Sequence[Batch],
    outer_batch: Batch,
    stop_gradient: bool = False,
    truncate: int | None = None,
    weights: Sequence[float] | None = None,
) -> Hypergrad:
    hyper = _hyper(problem)
    ws = check_trajectory_weights(weights, len(batches))
    start = None
    prefix = None
    tracked = batches
    if truncate is not None and truncate != len(batches):
        if not 1 <= truncate <= len(batches):
            raise SlemError(f"truncate must be in 1..{len(batches)} (the steps), got {truncate}")
        if problem.initial_params is not None:
            raise SlemError(
                "truncate below the number of steps would drop the gradient of the learned "
                "initialization (initial_params); use the full horizon or first_order"
            )
        cut = len(batches) - truncate
        params0, state0, prefix = warm_start(
            problem, hyper, batches[:cut], None if ws is None else ws[:cut]
        )
        start = (params0, state0)
        tracked = batches[cut:]
        ws = None if ws is None else ws[cut:]
    final: list[State] = []
    objective = make_objective(
        problem, tracked, outer_batch, stop_gradient, start, ws, prefix, final_state=final
    )
    if stop_gradient:
        grads, loss, params, state = _first_order_backward(objective, hyper, final)
    else:
        grads, (loss, (params, leaves)) = grad_and_value(objective, has_aux=True)(hyper)
        state = with_leaves(final[0], iter(detach_tree(leaves)))
    diagnostics: dict[str, Any] = {"steps": len(batches), "tracked_steps": len(tracked)}
    if weights is not None:
        diagnostics["objective"] = "trajectory"
    return Hypergrad(
        grads=detach_tree(grads),
        outer_loss=float(loss),
        method=method,
        diagnostics=diagnostics,
        params=detach_tree(params),
        optimizer_state=state,
    )


def _first_order_backward(
    objective: Objective, hyper: Params, final: list[State]
) -> tuple[Params, Tensor, Params, State]:
    """Reverse mode of a first-order objective with plain autograd: its inner gradients are
    constants, so nothing needs a second derivative and one backward through the unroll
    does, without torch.func's per-operation overhead (the structured fast paths do the
    same). Gradients of hyperparameters the objective does not read are 0, as torch.func's."""
    leaves = {k: t.detach().requires_grad_(True) for k, t in hyper.items()}
    with torch.enable_grad():
        loss, (params, _) = objective(leaves)
        found: Sequence[Tensor | None] = [None] * len(leaves)
        if loss.requires_grad:
            found = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = {
        k: torch.zeros_like(t) if d is None else d
        for (k, t), d in zip(leaves.items(), found, strict=True)
    }
    return grads, loss.detach(), detach_tree(params), detach_tree(final[0])


def lookahead(
    problem: BilevelProblem,
    outer_batch: Batch,
    inner_batch: Batch = NOT_GIVEN,
    inner_batches: Sequence[Batch] | None = None,
    fast: bool = True,
    jvp_mode: str = "forward",
    keep_graph: bool = False,
    epsilon: float | None = None,
    live_forward: bool | None = None,
) -> Hypergrad:
    """One virtual step, then the outer loss (MW-Net, Shu et al. 2019; second-order DARTS,
    Liu et al. 2019). Exact gradient of ``L_out(theta - lr * grad L_in(theta, phi))``.
    A :class:`~slem.bilevel.rate.RateProblem` (``phi`` sets the rate only) takes its
    structured path, one backward and no second derivative (``fast=False``: generic).

    Cost: about 3-4 steps of time (a double backward) and the memory of one step's graph
    twice. When ``problem`` is a :class:`~slem.bilevel.WeightedProblem` (``phi`` enters only
    as per-sample weights), the structured fast path gives the same gradient with one JVP
    instead of the double backward (``fast=False`` forces the generic path; ``jvp_mode``,
    ``keep_graph``, ``epsilon`` and ``live_forward`` are the fast path's options).
    Use it for online meta-learning that interleaves meta steps with training.
    """
    from slem.bilevel.fast import WeightedProblem, weighted_lookahead
    from slem.bilevel.rate import RateProblem, rate_lookahead

    if inner_batches is not None and len(inner_batches) != 1:
        raise SlemError("lookahead takes one step on one batch; use unrolled for several")
    batches = schedule(inner_batch, inner_batches, 1)
    if fast and isinstance(problem, RateProblem):
        return rate_lookahead(problem, batches[0], outer_batch)
    if fast and isinstance(problem, WeightedProblem):
        return weighted_lookahead(
            problem, batches[0], outer_batch, jvp_mode, keep_graph, epsilon, live_forward
        )
    refuse_reduce(problem)
    result = _reverse(problem, "lookahead", batches, outer_batch)
    result.diagnostics["path"] = "generic"
    return result


def unrolled(
    problem: BilevelProblem,
    outer_batch: Batch,
    inner_batch: Batch = NOT_GIVEN,
    inner_batches: Sequence[Batch] | None = None,
    steps: int | None = None,
    truncate: int | None = None,
    trajectory_weights: Sequence[float] | None = None,
) -> Hypergrad:
    """Reverse mode through ``K`` inner steps: iterative differentiation (ITD; Maclaurin et
    al. 2015, Franceschi et al. 2017), optionally truncated to the last ``truncate`` steps
    (Shaban et al. 2019).

    ``trajectory_weights`` (``K + 1`` floats ``w_0..w_K``) replaces the objective
    ``L_out(theta_K)`` by the weighted sum over the iterates, the meta loss of learned
    optimizers (Andrychowicz et al. 2016, eq. 3)::

        sum_{t<K} w_t * outer_loss(theta_t, phi, inner_batch_t)
            + w_K * outer_loss(theta_K, phi, outer_batch)

    where ``inner_batch_t`` is step ``t``'s batch, the one whose gradient moves ``theta_t``
    (``(0, ..., 0, 1)`` is the plain objective; ``w_K = 0`` with ``outer_batch=None`` is the
    paper's sum of the losses the optimizer sees; weights uniform or increasing in ``t``). A
    weight of 0 skips its loss. Under truncation the untracked steps' terms add to the
    value, not to the gradient. ``outer_loss`` of the result is the weighted sum.

    Cost: about 3-4 K steps of time and memory growing linearly with K (or with
    ``truncate``); each non-zero ``w_t``, ``t < K``, adds one forward. Exact for the K-step
    objective; use it when K is moderate and ``phi`` is large (reverse mode's cost does not
    grow with H). Truncation trades bias for memory. ``params`` and ``optimizer_state`` of
    the result are ``theta_K`` and its optimizer state.
    """
    batches = schedule(inner_batch, inner_batches, steps)
    return _reverse(
        problem, "unrolled", batches, outer_batch, truncate=truncate, weights=trajectory_weights
    )


def first_order(
    problem: BilevelProblem,
    outer_batch: Batch,
    inner_batch: Batch = NOT_GIVEN,
    inner_batches: Sequence[Batch] | None = None,
    steps: int | None = None,
    trajectory_weights: Sequence[float] | None = None,
) -> Hypergrad:
    """Unrolled, but the inner gradients are treated as constants: every second-order term
    is dropped (FOMAML, Finn et al. 2017; first-order DARTS, Liu et al. 2019).

    Cost: about K steps of time, memory of the unrolled parameters only. Exact where ``phi``
    reaches ``theta`` without passing through a gradient (learning rates, momentum, weight
    decay for one step; MAML's initialization up to the Hessian terms; a learned optimizer
    ``theta_{t+1} = theta_t + m(grad_t, state_t; phi)``, where the gradient is the
    optimizer's input, as in Andrychowicz et al. 2016); zero for hyperparameters that act
    only through the inner gradient, such as sample weights. The cheapest option and the one
    that scales out (no double backward, so DDP-safe). ``trajectory_weights``: the weighted
    sum over the iterates, as in :func:`unrolled`. ``steps=0`` differentiates the outer loss
    at the current parameters, ``d L_out(theta, phi) / d phi`` (first-order DARTS, ``xi = 0``).
    """
    batches = schedule(inner_batch, inner_batches, steps, least=0)
    return _reverse(
        problem,
        "first_order",
        batches,
        outer_batch,
        stop_gradient=True,
        weights=trajectory_weights,
    )


def forward(
    problem: BilevelProblem,
    outer_batch: Batch,
    inner_batch: Batch = NOT_GIVEN,
    inner_batches: Sequence[Batch] | None = None,
    steps: int | None = None,
    max_directions: int = 1024,
    chunk_size: int | None = None,
) -> Hypergrad:
    """Forward mode through ``K`` inner steps, one JVP per hyperparameter (forward
    hypergradient, Franceschi et al. 2017).

    Cost: about 3 H K steps of arithmetic, but memory independent of K (no tape); the H
    directions are batched with ``vmap`` (``chunk_size`` directions at a time bounds memory;
    a model that cannot be vectorized falls back to one pass per direction). Exact for the
    K-step objective; use it for few hyperparameters (learning rates, a few regularizers) and
    horizons too long for reverse mode's memory.
    """
    batches = schedule(inner_batch, inner_batches, steps)
    hyper = _hyper(problem)
    n = flat_dim(hyper)
    if n > max_directions:
        raise SlemError(
            f"forward mode needs one pass per hyperparameter and there are {n}; use "
            f"unrolled (reverse mode) or raise max_directions above {max_directions}"
        )
    objective = make_objective(problem, batches, outer_batch)

    def directional(tangent: Params) -> tuple[Tensor, Tensor]:
        return push_forward(lambda h: objective(h)[0], (hyper,), (tangent,))

    tangents = {k: torch.stack([basis(hyper, j)[k] for j in range(n)]) for k in hyper}
    vectorized = True
    try:
        losses, flat = vmap(directional, chunk_size=chunk_size)(tangents)
        loss = losses[0]
    except RuntimeError:  # e.g. an op without a batching rule: one pass per direction
        vectorized = False
        pairs = [directional(basis(hyper, j)) for j in range(n)]
        loss, flat = pairs[0][0], torch.stack([d for _, d in pairs])
    grads: Params = {}
    offset = 0
    for name, t in hyper.items():
        grads[name] = flat[offset : offset + t.numel()].reshape(t.shape).detach()
        offset += int(t.numel())
    return Hypergrad(
        grads=grads,
        outer_loss=float(loss),
        method="forward",
        diagnostics={"steps": len(batches), "directions": n, "vectorized": vectorized},
    )


def implicit(
    problem: BilevelProblem,
    outer_batch: Batch,
    inner_batch: Batch = NOT_GIVEN,
    inner_batches: Sequence[Batch] | None = None,
    solver: str = "cg",
    iterations: int | None = None,
    tol: float = 1e-10,
    damping: float = 0.0,
    alpha: float | None = None,
    inner_steps: int = 0,
    negative_curvature: str = "raise",
    hessian_solve: implicit_solvers.HessianSolve | None = None,
) -> Hypergrad:
    """Implicit function theorem at the inner optimum (Pedregosa 2016; Lorraine et al. 2020):
    ``d L/d phi = dL/dphi - (d^2 L_in/dphi dtheta) H^{-1} dL/dtheta`` with ``H`` the Hessian of
    the inner objective (including the optimizer's weight decay), solved by conjugate gradient
    (``solver="cg"``) or a Neumann series (``solver="neumann"``, step ``alpha``) using
    Hessian-vector products from torch.func (forward-over-reverse), or densely
    (``solver="direct"``, small inner problems): ``hessian_solve``, a function
    ``v -> H^{-1} v`` on flat vectors (the inner parameters in their dict order, each
    flattened row-major: :func:`slem.bilevel.implicit.flatten`), applies a factorization the
    caller already holds (e.g. the Cholesky factor of a Newton inner solve, which makes the
    hypergradient nearly free; ``damping`` is then the caller's business); without it the
    dense Hessian is built from ``P`` Hessian-vector products (plus ``damping``) and
    Cholesky-factored (``P`` up to a few thousand).

    Assumes ``problem.params`` is (close to) the optimum of the inner objective averaged over
    the given inner batches; ``inner_steps`` runs that many plain steps first. Cost: one
    Hessian-vector product (about 2 steps) per iteration, memory of one step, independent of
    how long the inner problem was trained. Use it when the inner problem is trained to
    convergence (HPO of regularizers, iMAML-style problems). ``negative_curvature="stop"``
    makes CG return its iterate at a direction of non-positive curvature instead of raising
    (truncated CG, for non-convex inner problems such as iMAML's networks).
    """
    if problem.initial_params is not None:
        raise SlemError("implicit needs fixed inner parameters; initial_params is not supported")
    batches = schedule(inner_batch, inner_batches, None)
    hyper = _hyper(problem)
    params, state, _ = warm_start(
        problem, hyper, [batches[k % len(batches)] for k in range(inner_steps)]
    )
    l2 = problem.optimizer.l2
    l2(hyper)  # an optimizer without a stationary loss (AdamW) refuses here

    def stationarity(theta: Params, h: Params) -> Params:
        """Gradient of the inner objective, averaged over all the given inner batches."""
        total: Params | None = None
        for batch in batches:
            g = grad(problem.inner_loss)(theta, h, batch)
            total = g if total is None else {k: total[k] + g[k] for k in g}
        assert total is not None
        decay = l2(h)
        scale = 1.0 / len(batches)
        if isinstance(decay, Tensor) or decay != 0.0:
            return {k: scale * total[k] + decay * theta[k] for k in total}
        return {k: scale * total[k] for k in total} if len(batches) > 1 else total

    (v, direct), loss = grad_and_value(problem.outer_loss, argnums=(0, 1))(
        params, hyper, outer_batch
    )

    def hvp(u: Params) -> Params:
        out: Params = push_forward(lambda t: stationarity(t, hyper), (params,), (u,))[1]
        return {k: out[k] + damping * u[k] for k in out} if damping else out

    q, info = implicit_solvers.solve(
        hvp, v, solver, iterations, tol, alpha, negative_curvature, hessian_solve
    )
    (mixed,) = pullback(lambda h: stationarity(params, h), hyper)(q)
    grads = {k: (direct[k] - mixed[k]).detach() for k in hyper}
    return Hypergrad(
        grads=grads,
        outer_loss=float(loss),
        method="implicit",
        diagnostics={"solver": solver, **info},
        params=detach_tree(params),
        optimizer_state=state,
    )


def finite_difference(
    problem: BilevelProblem,
    outer_batch: Batch,
    inner_batch: Batch = NOT_GIVEN,
    inner_batches: Sequence[Batch] | None = None,
    epsilon: float | None = None,
) -> Hypergrad:
    """The DARTS approximation of ``lookahead`` (Liu et al. 2019): the second-order term
    ``(d^2 L_in / dphi dtheta) w`` becomes a central difference of ``grad_phi L_in`` at
    ``theta +- eps w``, ``eps = epsilon / |w|``, where ``w`` pulls the outer gradient back
    through the optimizer update (``w = -lr v`` for plain SGD; exact for Adam too).

    Cost: about 3 steps of time, no double backward and no graph of a graph (the memory of one
    step). ``epsilon`` defaults to :func:`~slem.bilevel.fast.difference_step` (1e-2, 1e-6 in
    float64); the error is O(eps^2) for smooth networks and O(eps) where a ReLU kink lies
    inside the step. Use it where double backward is unavailable (DDP) or too costly.
    """
    if problem.initial_params is not None:
        raise SlemError("finite_difference does not support initial_params; use first_order")
    batch = schedule(inner_batch, inner_batches, 1)[0]
    hyper = _hyper(problem)
    params = detach_tree(problem.params)
    state = initial_state(problem, params)
    g = inner_grads(problem, params, hyper, batch, stop_gradient=True)
    new_params, new_state = problem.optimizer.update(params, g, state, hyper)
    new_params = detach_tree(new_params)
    (v, direct), loss = grad_and_value(problem.outer_loss, argnums=(0, 1))(
        new_params, hyper, outer_batch
    )
    w, opt_direct = pullback(
        lambda g_, h_: problem.optimizer.update(params, g_, state, h_)[0], g, hyper
    )(v)
    norm = torch.sqrt(sum((t * t).sum() for t in w.values()))
    if epsilon is None:
        from slem.bilevel.fast import difference_step

        epsilon = difference_step(next(iter(params.values())).dtype)
    eps = epsilon / max(float(norm), 1e-12)
    grad_phi = grad(problem.inner_loss, argnums=1)
    plus = grad_phi({k: params[k] + eps * w[k] for k in params}, hyper, batch)
    minus = grad_phi({k: params[k] - eps * w[k] for k in params}, hyper, batch)
    grads = {
        k: (direct[k] + opt_direct[k] + (plus[k] - minus[k]) / (2 * eps)).detach() for k in hyper
    }
    return Hypergrad(
        grads=grads,
        outer_loss=float(loss),
        method="finite_difference",
        diagnostics={"epsilon": eps},
        params=new_params,
        optimizer_state=detach_tree(new_state),
    )


METHODS: dict[str, Method] = {
    "lookahead": lookahead,
    "unrolled": unrolled,
    "forward": forward,
    "implicit": implicit,
    "finite_difference": finite_difference,
    "first_order": first_order,
}


def refuse_reduce(problem: BilevelProblem) -> None:
    """Only the fast path combines the ranks of a data-parallel problem.

    Raises:
        SlemError: ``problem`` carries a ``reduce`` (a :class:`~slem.bilevel.WeightedProblem`
            over ranks).
    """
    if getattr(problem, "reduce", None) is not None:
        raise SlemError(
            "data-parallel meta-learning needs meta.hypergrad lookahead (the per-sample-weight "
            "fast path); run other hypergradient methods on one process"
        )


def hypergrad(
    problem: BilevelProblem, method: str = "lookahead", *, outer_batch: Batch, **options: Any
) -> Hypergrad:
    """The gradient of the outer loss for ``problem.hyper``, by ``method``.

    Methods: ``lookahead``, ``unrolled``, ``forward``, ``implicit``, ``finite_difference``,
    ``first_order``; each documents its paper, cost and use. Pass the inner data as
    ``inner_batch=`` (reused every step) or ``inner_batches=`` (one per step), and the
    method's options by keyword. Nothing in ``problem`` is modified.

    ``trajectory_weights=`` (``unrolled`` and ``first_order``: :data:`TRAJECTORY_METHODS`)
    makes the objective the weighted sum of the outer loss over the unrolled iterates
    (learned optimizers' meta loss; see :func:`unrolled`); any other method refuses it.

    Every forward pass of the computation sees one draw of torch's randomness (see
    :func:`~slem.bilevel.same_randomness`), so dropout and other stochastic layers give the
    same model in the virtual step, the JVP and the outer loss.
    """
    fn = METHODS.get(method)
    if fn is None:
        raise SlemError(f"unknown hypergradient method '{method}'; use one of {', '.join(METHODS)}")
    if options.get("trajectory_weights") is not None and method not in TRAJECTORY_METHODS:
        raise SlemError(
            f"method '{method}' has no trajectory objective: trajectory_weights (the outer loss "
            f"summed over the unrolled iterates) needs {' or '.join(TRAJECTORY_METHODS)}"
        )
    if method != "lookahead":
        refuse_reduce(problem)
    if "trajectory_weights" in options and options["trajectory_weights"] is None:
        options = {k: v for k, v in options.items() if k != "trajectory_weights"}
    try:
        inspect.signature(fn).bind(problem, outer_batch=outer_batch, **options)
    except TypeError as exc:
        allowed = [
            n for n in inspect.signature(fn).parameters if n not in ("problem", "outer_batch")
        ]
        raise SlemError(f"method '{method}': {exc}; its options are {', '.join(allowed)}") from None
    start = time.perf_counter()
    with same_randomness():
        result = fn(problem, outer_batch=outer_batch, **options)
    result.diagnostics["seconds"] = time.perf_counter() - start
    return result
