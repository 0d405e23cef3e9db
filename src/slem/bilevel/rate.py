"""The structured path for hyperparameters that set the inner step's learning rate.

When ``phi`` enters the inner problem only through the rate of the update,
``theta' = U(theta, g; lr(phi))`` with ``g = grad L_in(theta)`` independent of ``phi``
(MLR-SNet, Shu et al. 2022; hypergradient descent, Baydin et al. 2018), the one-step
hypergradient needs no second derivative:

    dL_out(theta')/dphi = (dtheta'/dlr)^T grad L_out(theta') dlr/dphi,

one backward through the update's dependence on the rate. :func:`rate_lookahead` computes it
with ``g`` held constant (the real step's own gradient when the caller passes it), so a meta
step costs one forward of the outer loss more than plain training. Every other method of
:func:`~slem.bilevel.hypergrad` treats a :class:`RateProblem` as the generic problem it also is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from slem.bilevel.problem import Batch, BilevelProblem, Hypergrad, Params
from slem.bilevel.unroll import detach_tree, initial_state


@dataclass
class RateProblem(BilevelProblem):
    """A bilevel problem whose hyperparameters set the inner update's rate only: the
    ``optimizer``'s ``lr`` is a function of ``hyper`` and ``inner_loss`` does not read
    ``hyper``. ``grads``: the inner gradient at ``params`` when the caller already has it
    (e.g. the real training step's), else it is computed from ``inner_loss``."""

    grads: Params | None = None


def rate_lookahead(problem: RateProblem, batch: Batch, outer_batch: Batch) -> Hypergrad:
    """The exact one-step hypergradient of a :class:`RateProblem` (see the module doc).

    ``grads`` leaves out hyperparameters the rate does not read. ``diagnostics``: ``path``
    (``"rate"``), ``inner_grads`` and ``optimizer_state`` after the virtual step.
    """
    hyper = {k: v.detach().requires_grad_(True) for k, v in problem.hyper.items()}
    params = detach_tree(problem.params)
    state = initial_state(problem, params)
    with torch.enable_grad():
        if problem.grads is not None:
            g = detach_tree(problem.grads)
        else:
            live = {k: t.requires_grad_(True) for k, t in detach_tree(params).items()}
            loss = problem.inner_loss(live, detach_tree(hyper), batch)
            g = dict(zip(live, torch.autograd.grad(loss, list(live.values())), strict=True))
        stepped, new_state = problem.optimizer.update(params, g, state, hyper)
        outer = problem.outer_loss(stepped, hyper, outer_batch)
        found = torch.autograd.grad(outer, list(hyper.values()), allow_unused=True)
    # a hyperparameter the rate does not read has no gradient (as after .backward()), so an
    # optimizer with weight decay leaves it alone
    grads = {k: d.detach() for k, d in zip(hyper, found, strict=True) if d is not None}
    diagnostics: dict[str, Any] = {
        "path": "rate",
        "inner_grads": g,
        "optimizer_state": detach_tree(new_state),
    }
    return Hypergrad(
        grads=grads,
        outer_loss=float(outer.detach()),
        method="lookahead",
        diagnostics=diagnostics,
        params=detach_tree(stepped),
        optimizer_state=diagnostics["optimizer_state"],
    )
