"""Hypergradients averaged over a batch of tasks: the meta-gradient of few-shot meta-learning.

    min_phi  (1/B) sum_b L_outer(theta_K^b(phi), phi; query_b)
    theta_K^b = K inner steps on support_b, from problem.start(phi)

(MAML's meta-objective, Finn et al. 2017, eq. 1; the SLeM paper's average over tasks, eq. 4).
Every task shares the :class:`~slem.bilevel.BilevelProblem` (its losses take *one* task's
batch) and the hyperparameters; the batches carry a leading task dimension ``B``. The tasks run
at once under :func:`torch.func.vmap` (``vectorize=True``), or one after the other (the loop a
model without batching rules needs, and the reference the vectorized path is tested against).
Since the mean's gradient is the mean of the gradients, one reverse pass through the vectorized
objective gives the averaged hypergradient.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap
from torch.utils._pytree import tree_map
from torch.utils.checkpoint import checkpoint as checkpoint_step

from slem.bilevel.methods import implicit
from slem.bilevel.problem import Batch, BilevelProblem, Hypergrad, Params
from slem.bilevel.unroll import detach_tree, initial_state
from slem.errors import SlemError

#: the methods :func:`task_hypergrad` takes
TASK_METHODS = ("unrolled", "first_order", "implicit")


def task_count(batch: Batch) -> int:
    """The leading (task) dimension shared by every tensor of ``batch``.

    Raises:
        SlemError: ``batch`` holds no tensor, or its tensors disagree on the task count.
    """
    sizes = {int(t.shape[0]) for t in _tensors(batch)}
    if len(sizes) != 1:
        found = sorted(sizes) if sizes else "no tensor"
        raise SlemError(f"a task batch needs one leading task dimension; found {found}")
    return sizes.pop()


def _tensors(batch: Batch) -> list[Tensor]:
    found: list[Tensor] = []
    tree_map(lambda t: found.append(t) if isinstance(t, Tensor) else None, batch)
    return found


def task_slice(batch: Batch, index: int) -> Batch:
    """Task ``index`` of a task batch (every tensor indexed along its first dimension)."""
    return tree_map(lambda t: t[index] if isinstance(t, Tensor) else t, batch)


def adapt(
    problem: BilevelProblem,
    hyper: Params,
    inner_batch: Batch,
    steps: int,
    first_order: bool = False,
) -> Params:
    """``steps`` inner steps on ``inner_batch`` (one task's) from ``problem.start(hyper)``:
    the task's adapted parameters, differentiable in ``hyper`` through the start, the updates
    and (unless ``first_order``) the inner gradients. Pure, for torch.func transforms."""
    params = problem.start(hyper)
    if problem.initial_params is None:
        params = detach_tree(params)
    state = initial_state(problem, params)
    for _ in range(steps):
        g = grad(problem.inner_loss)(params, hyper, inner_batch)
        if first_order:  # the inner gradient as a constant: FOMAML, Reptile
            g = detach_tree(g)
        params, state = problem.optimizer.update(params, g, state, hyper)
    return params


def _objective(
    problem: BilevelProblem, steps: int, first_order: bool
) -> Callable[[Params, Batch, Batch], tuple[Tensor, Params]]:
    def objective(hyper: Params, inner: Batch, outer: Batch) -> tuple[Tensor, Params]:
        params = adapt(problem, hyper, inner, steps, first_order)
        loss = problem.outer_loss(params, hyper, outer)
        if loss.dim() != 0:
            raise SlemError(f"outer_loss must return a scalar, got shape {tuple(loss.shape)}")
        return loss, params

    return objective


def _stack(trees: list[Params]) -> Params:
    return {k: torch.stack([t[k] for t in trees]) for k in trees[0]}


def _reverse(
    problem: BilevelProblem,
    hyper: Params,
    inner: Batch,
    outer: Batch,
    steps: int,
    first_order: bool,
    vectorize: bool,
    tasks: int,
) -> tuple[Params, Tensor, Params]:
    objective = _objective(problem, steps, first_order)
    if vectorize:

        def mean(h: Params) -> tuple[Tensor, tuple[Tensor, Params]]:
            losses, params = vmap(objective, in_dims=(None, 0, 0), randomness="different")(
                h, inner, outer
            )
            return losses.mean(), (losses, params)

        grads, (_, (losses, params)) = grad_and_value(mean, has_aux=True)(hyper)
        return grads, losses, params
    total: Params | None = None
    losses_, finals = [], []
    for b in range(tasks):
        g, (loss, params) = grad_and_value(objective, has_aux=True)(
            hyper, task_slice(inner, b), task_slice(outer, b)
        )
        total = g if total is None else {k: total[k] + g[k] for k in g}
        losses_.append(loss)
        finals.append(params)
    assert total is not None
    return {k: t / tasks for k, t in total.items()}, torch.stack(losses_), _stack(finals)


def _checkpointed(
    problem: BilevelProblem, hyper: Params, inner: Batch, outer: Batch, steps: int, tasks: int
) -> tuple[Params, Tensor, Params]:
    """Second order through ``steps`` inner steps with plain autograd, each step under
    :func:`torch.utils.checkpoint.checkpoint`: its activations are recomputed in the backward
    pass instead of kept, so memory holds one step's activations plus the ``K`` iterates.
    torch.func transforms do not support checkpointing's saved-tensor hooks, so tasks run
    one after the other."""
    leaves = {k: t.detach().requires_grad_(True) for k, t in hyper.items()}
    names = list(leaves)
    total = {k: torch.zeros_like(t) for k, t in leaves.items()}
    losses_, finals = [], []
    for b in range(tasks):
        task_inner, task_outer = task_slice(inner, b), task_slice(outer, b)
        with torch.enable_grad():
            params = problem.start(leaves)
            if problem.initial_params is None:
                params = {k: t.detach().requires_grad_(True) for k, t in params.items()}
            state = initial_state(problem, params)
            keys = list(params)

            def step(
                *values: Tensor,
                state: Any = state,
                batch: Batch = task_inner,
                keys: list[str] = keys,
            ) -> Any:
                p = dict(zip(keys, values[: len(keys)], strict=True))
                h = dict(zip(names, values[len(keys) :], strict=True))
                loss = problem.inner_loss(p, h, batch)
                g = torch.autograd.grad(loss, list(p.values()), create_graph=True)
                new, _ = problem.optimizer.update(p, dict(zip(keys, g, strict=True)), state, h)
                return tuple(new[k] for k in keys)

            for _ in range(steps):
                values = checkpoint_step(
                    step, *params.values(), *leaves.values(), use_reentrant=False
                )
                params = dict(zip(keys, values, strict=True))
            loss = problem.outer_loss(params, leaves, task_outer)
            found = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for k, d in zip(names, found, strict=True):
            if d is not None:
                total[k] += d / tasks
        losses_.append(loss.detach())
        finals.append(detach_tree(params))
    return total, torch.stack(losses_), _stack(finals)


def _implicit(
    problem: BilevelProblem,
    hyper: Params,
    inner: Batch,
    outer: Batch,
    steps: int,
    vectorize: bool,
    tasks: int,
    options: dict[str, Any],
) -> tuple[Params, Tensor, Params, dict[str, Any]]:
    """iMAML (Rajeswaran et al. 2019): each task's inner problem is solved approximately by
    ``steps`` first-order steps from ``problem.start(hyper)`` (vectorized, no graph), then the
    implicit hypergradient at that point, task by task (the linear solver stops per task)."""

    def solve(h: Params, batch: Batch) -> Params:
        return detach_tree(adapt(problem, h, batch, steps, first_order=True))

    if vectorize:
        finals = vmap(solve, in_dims=(None, 0), randomness="different")(hyper, inner)
    else:
        finals = _stack([solve(hyper, task_slice(inner, b)) for b in range(tasks)])
    total: Params = {k: torch.zeros_like(t) for k, t in hyper.items()}
    losses_, residuals, iterations = [], [], []
    for b in range(tasks):
        fixed = replace(problem, params=task_slice(finals, b), initial_params=None)
        result = implicit(
            fixed, outer_batch=task_slice(outer, b), inner_batch=task_slice(inner, b), **options
        )
        for k, g in result.grads.items():
            total[k] += g / tasks
        losses_.append(torch.tensor(result.outer_loss))
        residuals.append(result.diagnostics.get("relative_residual", float("nan")))
        iterations.append(result.diagnostics.get("iterations", 0))
    info = {"max_relative_residual": max(residuals), "solver_iterations": iterations}
    return total, torch.stack(losses_), finals, info


def task_hypergrad(
    problem: BilevelProblem,
    method: str = "unrolled",
    *,
    inner_batch: Batch,
    outer_batch: Batch,
    steps: int = 1,
    vectorize: bool = True,
    checkpoint: bool = False,
    **options: Any,
) -> Hypergrad:
    """The hypergradient averaged over a batch of ``B`` tasks (module docstring).

    Args:
        problem: one task's bilevel problem: ``inner_loss(params, hyper, inner)`` and
            ``outer_loss(params, hyper, outer)`` take one task's batches; the inner run starts
            at ``problem.start(hyper)`` (``initial_params=lambda h: h`` is MAML's learned
            initialization).
        method: ``unrolled`` (second order through the ``steps`` inner steps; MAML),
            ``first_order`` (the inner gradients as constants; FOMAML, and Reptile's adapted
            parameters) or ``implicit`` (iMAML: the implicit function theorem at the
            adapted parameters; ``options`` go to :func:`~slem.bilevel.implicit`, e.g.
            ``solver``, ``iterations``, ``damping``).
        inner_batch, outer_batch: pytrees of tensors with a leading task dimension ``B``
            (e.g. ``(support_x, support_y)`` of shapes ``(B, S, ...)``, ``(B, S)``).
        steps: inner steps per task; 0 evaluates the outer loss at the start (metric
            learners such as prototypical networks, whose adaptation is closed form).
        vectorize: run the tasks at once with :func:`torch.func.vmap` (False: one by one;
            the same gradient up to float rounding).
        checkpoint: ``unrolled`` only: gradient checkpointing of each inner step, so memory
            does not grow with the activations of every step (tasks then run one by one).

    Returns:
        :class:`~slem.bilevel.Hypergrad` with ``grads`` and ``outer_loss`` averaged over the
        tasks, ``params`` the adapted parameters of every task stacked along a leading ``B``
        dimension (detached), and ``diagnostics``: ``tasks``, ``steps``, ``vectorized``,
        ``task_losses`` (one outer loss per task), ``seconds``.

    Memory: ``first_order`` and ``implicit`` keep no inner step's activations (flat in
    ``steps``); ``unrolled`` keeps every step's, unless ``checkpoint``.

    Raises:
        SlemError: an unknown method, ``steps`` < 0 (or 0 with ``implicit``), ``checkpoint``
            with another method, options for a method that takes none, batches without one
            shared task dimension.
    """
    if method not in TASK_METHODS:
        raise SlemError(
            f"unknown task-batch hypergradient method '{method}'; use one of "
            f"{', '.join(TASK_METHODS)}"
        )
    if steps < 0 or (steps == 0 and method == "implicit"):
        least = 1 if method == "implicit" else 0
        raise SlemError(f"steps must be at least {least} for method {method}, got {steps}")
    if checkpoint and method != "unrolled":
        raise SlemError(
            f"checkpoint is for method unrolled (second order); {method} keeps no inner "
            "step's activations already"
        )
    if options and method != "implicit":
        raise SlemError(
            f"method '{method}' takes no options (got {', '.join(sorted(options))}); only "
            "implicit takes solver options"
        )
    tasks = task_count(inner_batch)
    if task_count(outer_batch) != tasks:
        raise SlemError(
            f"inner_batch has {tasks} tasks and outer_batch {task_count(outer_batch)}; give "
            "both the same leading task dimension"
        )
    hyper = detach_tree(problem.hyper)
    start = time.perf_counter()
    info: dict[str, Any] = {}
    if method == "implicit":
        grads, losses, params, info = _implicit(
            problem, hyper, inner_batch, outer_batch, steps, vectorize, tasks, options
        )
    elif checkpoint:
        vectorize = False
        grads, losses, params = _checkpointed(
            problem, hyper, inner_batch, outer_batch, steps, tasks
        )
    else:
        grads, losses, params = _reverse(
            problem,
            hyper,
            inner_batch,
            outer_batch,
            steps,
            method == "first_order",
            vectorize,
            tasks,
        )
    losses = losses.detach()
    return Hypergrad(
        grads=detach_tree(grads),
        outer_loss=float(losses.mean()),
        method=method,
        diagnostics={
            "tasks": tasks,
            "steps": steps,
            "vectorized": vectorize,
            "checkpoint": checkpoint,
            "task_losses": [float(v) for v in losses],
            "seconds": time.perf_counter() - start,
            **info,
        },
        params=detach_tree(params),
    )
