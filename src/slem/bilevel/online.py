"""Online hypergradients along the trajectory the caller trains: forward mode, first order.

Real-time hyperparameter optimization (RTHO, Franceschi et al. 2017, Sec. 3.2) carries the
tangent ``Z_t = d theta_t / d phi`` forward with every real training step and reads the
hypergradient of an outer loss at any time as ``<grad_theta L_out(theta_t), Z_t> +
d L_out / d phi``. Keeping the Hessian term of the exact recursion costs one Hessian-vector
product per hyperparameter and step; :class:`ForwardTangents` drops it, holding each step's
inner gradient constant, as :func:`~slem.bilevel.first_order` does in reverse mode. What
remains is exact where ``phi`` enters through the update itself (learning rate, momentum,
weight decay; Baydin et al. 2018's hypergradient descent is its one-step case) and costs a few
elementwise operations per parameter and hyperparameter: no replay, no tape, and the real
step stays the caller's ``torch.optim`` step.

Truncating the horizon (:meth:`ForwardTangents.reset` after each hyperparameter update) gives
the same hypergradient as ``hypergrad(problem, "first_order", inner_batches=window)`` over the
window's batches (tested), at no extra training cost. Horizons matter: one-step hypergradients
of a learning rate are biased towards small rates (Wu et al. 2018, short-horizon bias).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value

from slem.bilevel.optim import SGD, Adam, InnerOptimizer, State, resolve
from slem.bilevel.problem import Batch, Hypergrad, Params
from slem.bilevel.unroll import basis, detach_tree, flat_dim, tensor_leaves, with_leaves
from slem.errors import SlemError

OuterLoss = Callable[[Params, Params, Batch], Tensor]


def _jvps(
    outs: list[Tensor], inputs: list[Tensor], directions: list[list[Tensor]]
) -> list[list[Tensor]]:
    """Jacobian-vector products of ``outs`` with respect to ``inputs``, one list per direction,
    by two reverse passes of plain autograd (the transpose of a vector-Jacobian product is
    linear in the vector, so differentiating it again gives ``J u``). torch's forward-mode AD
    takes a slow, decomposed path whenever a dual tensor meets a plain one, as every optimizer
    update does (its gradient is a constant); this takes ~2 backward passes of the update."""
    live = [i for i, o in enumerate(outs) if o.requires_grad]
    probes = [torch.zeros_like(outs[i], requires_grad=True) for i in live]
    pulled = torch.autograd.grad(
        [outs[i] for i in live], inputs, probes, create_graph=True, allow_unused=True
    )
    used = [(k, p) for k, p in enumerate(pulled) if p is not None and p.requires_grad]
    result = []
    for direction in directions:
        found = torch.autograd.grad(
            [p for _, p in used],
            probes,
            [direction[k] for k, _ in used],
            retain_graph=True,
            allow_unused=True,
        )
        row = [torch.zeros_like(o) for o in outs]
        for i, t in zip(live, found, strict=True):
            if t is not None:
                row[i] = t.detach()
        result.append(row)
    return result


#: the one name of the flattened parameter vector
FLAT = "_flat"


def _flatten(
    optimizer: InnerOptimizer, params: Params, grads: Params, state: State, hyper: Params
) -> tuple[Params, Params, State] | None:
    """The update's inputs as one flat vector, when the optimizer is elementwise (SGD and Adam
    with one rate for all parameters): a few operations instead of a few per parameter, which
    is what the tangent step's cost is made of for small tensors. None: not elementwise (a
    per-parameter rate, Meta-SGD's), or a state that is not one entry per parameter."""
    if not isinstance(optimizer, SGD | Adam) or len(params) < 2:
        return None
    if isinstance(optimizer, SGD) and isinstance(resolve(optimizer.lr, hyper), dict):
        return None
    names = list(params)
    if len({t.dtype for t in params.values()}) != 1:
        return None

    def cat(values: Params) -> Tensor:
        return torch.cat([values[k].detach().reshape(-1) for k in names])

    def tree(node: Any) -> Any:
        if isinstance(node, dict) and node and set(node) == set(names):
            values = [node[k] for k in names]
            if all(isinstance(v, Tensor) for v in values):
                return {FLAT: cat(node)}
            if all(v == values[0] for v in values):  # step counts
                return {FLAT: values[0]}
            raise ValueError("uneven state")
        if isinstance(node, dict):
            if node and any(k in names for k in node):
                raise ValueError("partial state")
            return {k: tree(v) for k, v in node.items()}
        return node

    try:
        flat_state = tree(state)
    except ValueError:
        return None
    return {FLAT: cat(params)}, {FLAT: cat(grads)}, flat_state


class ForwardTangents:
    """The tangents ``d theta / d phi`` (and of the optimizer state) of a trajectory the caller
    trains, advanced step by step with the inner gradients held constant (see the module doc).

    Args:
        hyper: the hyperparameters ``phi`` by name (any shapes; ``H`` scalars in all).
        max_directions: refuse more than this many scalar hyperparameters: the tangents take
            ``H`` times the memory of the parameters and of the optimizer state.

    Shapes: every tangent has a leading axis of size ``H`` (one direction per scalar of
    ``hyper``, in the order of :func:`~slem.bilevel.unroll.basis`).

    Raises:
        SlemError: no hyperparameters, or more than ``max_directions``.
    """

    def __init__(self, hyper: Params, max_directions: int = 64) -> None:
        self.directions = flat_dim(hyper)
        if self.directions == 0:
            raise SlemError("ForwardTangents needs at least one hyperparameter")
        if self.directions > max_directions:
            raise SlemError(
                f"ForwardTangents carries one tangent per hyperparameter and there are "
                f"{self.directions}; use the implicit or unrolled hypergradient, or raise "
                f"max_directions above {max_directions}"
            )
        self._basis = {
            k: torch.stack([basis(hyper, j)[k] for j in range(self.directions)]) for k in hyper
        }
        self.params: Params | None = None  # (H, *shape) per parameter; None: all zero
        self.state: list[Tensor] = []  # (H, *shape) per tensor of the optimizer state
        self.steps = 0
        self.flat = False  # the tangents are of the flattened parameter vector

    def reset(self) -> None:
        """Drop the tangents (truncate the horizon): the next hypergradient sees only the
        steps taken from now on."""
        self.params, self.state, self.steps, self.flat = None, [], 0, False

    def decay(self, factor: float) -> None:
        """Scale the tangents by ``factor`` in [0, 1]: ``0`` is :meth:`reset`, ``1`` keeps the
        whole trajectory (RTHO's full horizon), between them older steps count
        geometrically less (MARTHE's discounted tangent, Donini et al. 2020)."""
        if not 0.0 <= factor <= 1.0:
            raise SlemError(f"ForwardTangents.decay needs a factor in [0, 1], got {factor}")
        if factor == 0.0:
            self.reset()
            return
        if self.params is not None:
            self.params = {k: factor * t for k, t in self.params.items()}
        self.state = [factor * t for t in self.state]

    def step(
        self,
        optimizer: InnerOptimizer,
        params: Params,
        grads: Params,
        state: State,
        hyper: Params,
    ) -> None:
        """Carry the tangents across one update ``optimizer.update(params, grads, state,
        hyper)``: call it with the values *before* the real step (whose twin ``optimizer``
        is, e.g. :func:`~slem.bilevel.from_torch`), then take the real step.

        ``grads`` are constants (first order). Cost: one forward-mode pass of the update per
        direction, vectorized over the ``H`` directions.
        """
        flat = _flatten(optimizer, params, grads, state, hyper)
        if flat is not None:
            self.flat = True
            params, grads, state = flat
        elif self.flat:
            raise SlemError("ForwardTangents: the update stopped being elementwise mid-horizon")
        grads = detach_tree(grads)
        names = list(params)
        leaves = [t.detach() for t in tensor_leaves(state)]
        z_params = self.params or {
            k: t.new_zeros((self.directions, *t.shape)) for k, t in params.items()
        }
        z_state = self.state
        if len(z_state) != len(leaves):  # the state's tensors appear with the first step
            z_state = [t.new_zeros((self.directions, *t.shape)) for t in leaves]
        with torch.enable_grad():
            h = {k: v.detach().requires_grad_(True) for k, v in hyper.items()}
            theta = {k: params[k].detach().requires_grad_(True) for k in names}
            s = [t.requires_grad_(True) for t in leaves]
            new_params, new_state = optimizer.update(theta, grads, with_leaves(state, iter(s)), h)
            outs = [new_params[k] for k in names] + tensor_leaves(new_state)
            tangents = _jvps(
                outs,
                [*h.values(), *theta.values(), *s],
                [
                    [self._basis[k][j] for k in h]
                    + [z_params[k][j] for k in names]
                    + [z[j] for z in z_state]
                    for j in range(self.directions)
                ],
            )
        stacked = [torch.stack([t[i] for t in tangents]) for i in range(len(outs))]
        self.params = dict(zip(names, stacked[: len(names)], strict=True))
        self.state = stacked[len(names) :]
        self.steps += 1

    def hypergrad(
        self, outer_loss: OuterLoss, params: Params, hyper: Params, outer_batch: Batch
    ) -> Hypergrad:
        """The hypergradient of ``outer_loss(params, hyper, outer_batch)`` along the steps
        carried since the last :meth:`reset`: ``<grad_theta L_out, Z> + d L_out / d phi``.
        ``params`` is the trajectory's current point (after the last real step).

        ``diagnostics``: ``steps`` (the horizon). ``params``/``optimizer_state`` are None:
        the caller owns the trajectory.
        """
        params = detach_tree(params)
        hyper = detach_tree(hyper)
        (v, direct), loss = grad_and_value(outer_loss, argnums=(0, 1))(params, hyper, outer_batch)
        if self.flat:
            v = {FLAT: torch.cat([t.reshape(-1) for t in v.values()])}
        flat = torch.zeros(self.directions, dtype=loss.dtype, device=loss.device)
        if self.params is not None:
            for name, z in self.params.items():
                flat = flat + (z * v[name].unsqueeze(0)).reshape(self.directions, -1).sum(1)
        grads: Params = {}
        offset = 0
        for name, t in hyper.items():
            n = int(t.numel())
            grads[name] = (direct[name] + flat[offset : offset + n].reshape(t.shape)).detach()
            offset += n
        diagnostics: dict[str, Any] = {"steps": self.steps, "path": "forward_first_order"}
        return Hypergrad(
            grads=grads, outer_loss=float(loss), method="first_order", diagnostics=diagnostics
        )
