"""The bilevel engine: hypergradients of ``L_outer(theta*(phi), phi)`` on torch.func.

It knows nothing of sample weights or learning rates: a caller describes the inner
parameters, the hyperparameters, the two losses and a differentiable inner optimizer
(:class:`BilevelProblem`), and :func:`hypergrad` returns the gradient for the
hyperparameters by any method, so callers switch methods by name::

    from slem.bilevel import BilevelProblem, SGD, functional, hypergrad

    net = functional(model)                     # a stock nn.Module, unchanged
    def inner_loss(params, hyper, batch):
        x, y = batch
        per_sample = F.cross_entropy(net(params, x), y, reduction="none")
        return (hyper["w"].sigmoid() * per_sample).mean()
    def outer_loss(params, hyper, batch):
        x, y = batch
        return F.cross_entropy(net(params, x), y)

    problem = BilevelProblem.from_module(model, {"w": w}, inner_loss, outer_loss, SGD(lr=0.1))
    result = hypergrad(problem, "lookahead", inner_batch=train_batch, outer_batch=meta_batch)
    result.grads["w"]

``unrolled`` and ``first_order`` also take ``trajectory_weights=`` (the outer loss summed over
the unrolled iterates, a learned optimizer's meta loss), and every method but ``forward`` returns
the final ``params`` and ``optimizer_state`` for the caller to continue from.

:func:`task_hypergrad` averages a hypergradient over a batch of tasks (MAML, first-order MAML,
iMAML, prototypical networks), vectorized with ``torch.func.vmap``. :class:`ForwardTangents`
carries a first-order forward-mode hypergradient along a trajectory the caller trains
(online learning rate and weight decay).
"""

from slem.bilevel.fast import PerSample, WeightedProblem, weighted_lookahead
from slem.bilevel.methods import (
    METHODS,
    finite_difference,
    first_order,
    forward,
    hypergrad,
    implicit,
    lookahead,
    unrolled,
)
from slem.bilevel.online import ForwardTangents
from slem.bilevel.optim import SGD, Adam, InnerOptimizer, from_torch
from slem.bilevel.problem import (
    BilevelProblem,
    FunctionalModel,
    Hypergrad,
    Params,
    RandomState,
    functional,
    live_forward,
    replay_randomness,
    same_randomness,
)
from slem.bilevel.rate import RateProblem, rate_lookahead
from slem.bilevel.tasks import TASK_METHODS, adapt, task_hypergrad

__all__ = [
    "METHODS",
    "SGD",
    "TASK_METHODS",
    "Adam",
    "BilevelProblem",
    "ForwardTangents",
    "FunctionalModel",
    "Hypergrad",
    "InnerOptimizer",
    "Params",
    "PerSample",
    "RandomState",
    "RateProblem",
    "WeightedProblem",
    "adapt",
    "finite_difference",
    "first_order",
    "forward",
    "from_torch",
    "functional",
    "hypergrad",
    "implicit",
    "live_forward",
    "lookahead",
    "rate_lookahead",
    "replay_randomness",
    "same_randomness",
    "task_hypergrad",
    "unrolled",
    "weighted_lookahead",
]
