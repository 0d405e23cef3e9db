"""The one description of a bilevel problem that every hypergradient method consumes.

    min_phi  L_outer(theta*(phi), phi)   where theta*(phi) comes from inner training under phi

A :class:`BilevelProblem` names the inner parameters ``theta`` (a dict of tensors, e.g. a stock
``nn.Module``'s parameters), the hyperparameters ``phi`` (tensors or an ``nn.Module``), the two
losses as pure functions ``loss(params, hyper, batch)``, and a differentiable inner optimizer.
The engine never mutates any of them.

**BatchNorm and other buffers.** A :class:`FunctionalModel` calls a stock module with explicit
parameters and a fresh *copy* of its buffers on every call. So, during virtual steps and every
other hypergradient computation, BatchNorm in train mode normalizes with the batch's statistics
(exactly as the real training step will), and the module's running statistics are never
updated: they change only in the real training step, once per step, through the module's own
forward. In eval mode the running statistics are read, never written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from slem.errors import SlemError

Params = dict[str, Tensor]
Batch = Any
LossFn = Callable[[Params, Params, Batch], Tensor]


_LIVE_FORWARD: ContextVar[bool] = ContextVar("slem_live_forward", default=False)


class RandomState:
    """A snapshot of torch's CPU generator and of every initialized CUDA device's generator."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda: list[Tensor] | None = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda = torch.cuda.get_rng_state_all()

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


_SNAPSHOT: ContextVar[RandomState | None] = ContextVar("slem_random_snapshot", default=None)


@contextmanager
def same_randomness(snapshot: RandomState | None = None) -> Iterator[RandomState]:
    """Within this context every :class:`FunctionalModel` call starts from one snapshot of
    torch's random state (taken on entry; a nested context keeps the outer snapshot), so all
    forward passes of one meta step see one draw of the model's randomness (dropout, ...).
    :func:`replay_randomness` restores it for a forward that does not go through
    :class:`FunctionalModel` (a trainer's real step). ``snapshot``: re-enter the snapshot an
    earlier context yielded (a step split in phases, with other work between them)."""
    current = _SNAPSHOT.get()
    if current is not None:
        yield current
        return
    snapshot = snapshot if snapshot is not None else RandomState()
    token = _SNAPSHOT.set(snapshot)
    try:
        yield snapshot
    finally:
        _SNAPSHOT.reset(token)


def replay_randomness() -> None:
    """Restore the snapshot of the enclosing :func:`same_randomness` (no-op outside one)."""
    snapshot = _SNAPSHOT.get()
    if snapshot is not None:
        snapshot.restore()


@contextmanager
def live_forward() -> Iterator[None]:
    """Within this context, a :class:`FunctionalModel` called with the module's *own*
    parameters runs the module itself, so BatchNorm's running statistics move. The fast path
    uses it for the one forward pass that is also the real training step's forward."""
    token = _LIVE_FORWARD.set(True)
    try:
        yield
    finally:
        _LIVE_FORWARD.reset(token)


class FunctionalModel:
    """``f(params, *inputs)`` evaluates ``module(*inputs)`` with ``params`` swapped in.

    Buffers are copied on every call (see the module docstring): calls have no side effects,
    and they compose with ``torch.func`` transforms (grad, jvp, vjp). The one exception is
    :func:`live_forward`.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def _is_own(self, params: Mapping[str, Tensor]) -> bool:
        own = dict(self.module.named_parameters())
        return all(own.get(name) is t for name, t in params.items())

    def __call__(self, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        replay_randomness()
        if _LIVE_FORWARD.get() and self._is_own(params):
            return self.module(*args, **kwargs)
        buffers = {name: b.clone() for name, b in self.module.named_buffers()}
        return functional_call(self.module, (dict(params), buffers), args, kwargs)

    def params(self, detach: bool = False) -> Params:
        """The module's current parameters (the live tensors, or detached copies)."""
        return {name: (p.detach() if detach else p) for name, p in self.module.named_parameters()}


def functional(module: nn.Module) -> FunctionalModel:
    """Wrap a stock module for use inside ``inner_loss``/``outer_loss``; no rewriting needed."""
    return FunctionalModel(module)


def as_params(value: Mapping[str, Tensor] | nn.Module | Tensor, what: str) -> Params:
    """Normalize tensors, a dict of tensors, or a module's parameters into a ``Params`` dict.

    Frozen parameters (an ``nn.Parameter`` with ``requires_grad=False``, from a module or in a
    dict such as ``dict(model.named_parameters())``) are left out: virtual steps never move
    them and no hypergradient flows to them, exactly as the real optimizer leaves them (a
    :class:`FunctionalModel` call then reads them from the module). Plain tensors are kept
    whatever their ``requires_grad`` (the engine detaches its inputs anyway).

    Raises:
        SlemError: an empty result, a non-tensor value or a non-floating-point tensor.
    """
    params: Params
    if isinstance(value, nn.Module):  # frozen parameters are neither inner params nor hyper
        params = {name: p for name, p in value.named_parameters() if p.requires_grad}
    elif isinstance(value, Tensor):
        params = {what: value}
    elif isinstance(value, Mapping):  # frozen nn.Parameters are dropped here too
        params = {
            name: t
            for name, t in value.items()
            if not (isinstance(t, nn.Parameter) and not t.requires_grad)
        }
    else:
        raise SlemError(
            f"{what} must be a dict of tensors, a tensor or an nn.Module, not "
            f"{type(value).__name__}"
        )
    if not params:
        raise SlemError(f"{what} is empty: there is nothing to differentiate")
    for name, t in params.items():
        if not isinstance(t, Tensor):
            raise SlemError(f"{what}['{name}'] is a {type(t).__name__}, not a tensor")
        if not t.is_floating_point():
            raise SlemError(f"{what}['{name}'] has dtype {t.dtype}; it must be floating point")
    return params


@dataclass
class BilevelProblem:
    """Inner parameters, hyperparameters, the two losses and the inner optimizer.

    ``initial_params``, when given, makes the inner parameters' starting point a function of
    the hyperparameters (``lambda hyper: hyper`` is MAML's learned initialization).
    ``optimizer_state`` carries, e.g., momentum buffers of the real training run into the
    virtual steps.
    """

    params: Params
    hyper: Params
    inner_loss: LossFn
    outer_loss: LossFn
    optimizer: Any  # slem.bilevel.optim.InnerOptimizer (Any avoids an import cycle for mypy)
    initial_params: Callable[[Params], Params] | None = None
    optimizer_state: Any = None
    hyper_module: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.hyper, nn.Module):
            self.hyper_module = self.hyper
        self.params = as_params(self.params, "params")
        self.hyper = as_params(self.hyper, "hyper")
        for fn_name in ("inner_loss", "outer_loss"):
            if not callable(getattr(self, fn_name)):
                raise SlemError(f"{fn_name} must be callable as {fn_name}(params, hyper, batch)")

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        hyper: Mapping[str, Tensor] | nn.Module | Tensor,
        inner_loss: LossFn,
        outer_loss: LossFn,
        optimizer: Any,
        **kwargs: Any,
    ) -> BilevelProblem:
        """Use a stock module's (live) trainable parameters as the inner parameters; frozen
        ones (``requires_grad=False``) stay fixed, as they do in real training."""
        return cls(
            params=as_params(model, "params"),
            hyper=as_params(hyper, "hyper"),
            inner_loss=inner_loss,
            outer_loss=outer_loss,
            optimizer=optimizer,
            hyper_module=hyper if isinstance(hyper, nn.Module) else None,
            **kwargs,
        )

    def start(self, hyper: Params) -> Params:
        """The inner starting point: ``initial_params(hyper)`` or the given parameters."""
        if self.initial_params is not None:
            return self.initial_params(hyper)
        return self.params


@dataclass
class Hypergrad:
    """What every method returns: gradients for the hyperparameters, plus diagnostics.

    ``outer_loss`` is the value of the differentiated objective (with ``trajectory_weights``,
    the weighted sum over the iterates). ``params`` are the (detached) inner parameters the
    final outer loss was evaluated at: the looked-ahead or unrolled parameters ``theta_K``,
    or the fixed point for ``implicit``. ``optimizer_state`` is the (detached) inner
    optimizer state that goes with them, in the optimizer's own format; a caller that
    continues the inner run (the next truncation of a long unroll) passes both on as the
    next problem's ``params`` and ``optimizer_state``. ``forward`` returns neither.
    """

    grads: Params
    outer_loss: float
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)
    params: Params | None = None
    optimizer_state: Any = None

    def accumulate_into(self, hyper: Mapping[str, Tensor] | nn.Module | Tensor) -> None:
        """Add the gradients into ``.grad`` so a ``torch.optim`` optimizer can step ``hyper``
        (a module, a dict of tensors, or the single tensor the problem was given)."""
        if isinstance(hyper, Tensor):
            if len(self.grads) != 1:
                raise SlemError("accumulate_into(tensor) needs exactly one hyperparameter")
            hyper = {next(iter(self.grads)): hyper}
        targets = dict(hyper.named_parameters()) if isinstance(hyper, nn.Module) else hyper
        for name, g in self.grads.items():
            t = targets[name]
            g = g.to(t.dtype)
            t.grad = g.clone() if t.grad is None else t.grad + g

    def flat(self) -> Tensor:
        """All gradients as one vector (in the order of ``grads``)."""
        return torch.cat([g.reshape(-1) for g in self.grads.values()])
