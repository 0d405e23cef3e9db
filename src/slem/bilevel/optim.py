"""Differentiable, functional inner optimizers: ``update(params, grads, state, hyper)``.

They follow ``torch.optim.SGD`` and ``torch.optim.Adam`` step for step (tested against them),
but are pure functions of tensors, so gradients flow through an update to the
hyperparameters. Any setting (``lr``, ``momentum``, ``weight_decay``) may be a float or a
function of the hyperparameters, e.g. ``lr=lambda h: h["log_lr"].exp()`` for hypergradient
learning-rate tuning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slem.bilevel.problem import Params
from slem.errors import SlemError

Setting = float | Callable[[Params], Tensor | Params]
State = dict[str, Any]


def resolve(setting: Setting, hyper: Params) -> Any:
    return setting(hyper) if callable(setting) else setting


class InnerOptimizer(ABC):
    """A differentiable optimizer step; ``state`` is a plain dict so it can be carried over."""

    @abstractmethod
    def init(self, params: Params) -> State:
        """Fresh state for ``params`` (zero step count, no moments)."""

    @abstractmethod
    def update(
        self, params: Params, grads: Params, state: State, hyper: Params
    ) -> tuple[Params, State]:
        """One step: new parameters and new state; nothing is modified in place."""

    def l2(self, hyper: Params) -> float | Tensor:
        """The weight-decay coefficient, which shifts the inner fixed point (used by implicit)."""
        return 0.0

    def state_from_torch(self, optimizer: torch.optim.Optimizer, params: Params) -> State:
        """Carry a ``torch.optim`` optimizer's state (momentum, moments) into virtual steps."""
        raise SlemError(f"{type(self).__name__} cannot import torch optimizer state")


@dataclass
class SGD(InnerOptimizer):
    """SGD with momentum, dampening, Nesterov and (coupled) weight decay, as torch.optim.SGD.

    ``lr`` may also resolve to a dict of per-parameter rates, one tensor per parameter name
    (its shape, or broadcastable to it): the learned elementwise rates of Meta-SGD (Li et al.
    2017, eq. 1: ``theta - alpha * grad``, ``alpha`` a hyperparameter of the parameters'
    shape).
    """

    lr: Setting
    momentum: Setting = 0.0
    weight_decay: Setting = 0.0
    dampening: float = 0.0
    nesterov: bool = False

    def init(self, params: Params) -> State:
        return {"step": 0, "momentum": {}}

    def l2(self, hyper: Params) -> float | Tensor:
        return resolve(self.weight_decay, hyper)

    def update(
        self, params: Params, grads: Params, state: State, hyper: Params
    ) -> tuple[Params, State]:
        lr, mu, wd = (resolve(s, hyper) for s in (self.lr, self.momentum, self.weight_decay))
        use_momentum = callable(self.momentum) or self.momentum != 0.0
        new_params: Params = {}
        buffers: Params = {}
        for name, p in params.items():
            g = grads[name]
            if callable(self.weight_decay) or self.weight_decay != 0.0:
                g = g + wd * p
            if use_momentum:
                prev = state["momentum"].get(name)
                buf = g if prev is None else mu * prev + (1.0 - self.dampening) * g
                buffers[name] = buf
                g = g + mu * buf if self.nesterov else buf
            new_params[name] = p - (lr[name] if isinstance(lr, dict) else lr) * g
        return new_params, {"step": state["step"] + 1, "momentum": buffers}

    def state_from_torch(self, optimizer: torch.optim.Optimizer, params: Params) -> State:
        ids = {id(p): name for name, p in params.items()}
        buffers = {
            ids[id(p)]: s["momentum_buffer"].detach()
            for p, s in optimizer.state.items()
            if id(p) in ids and s.get("momentum_buffer") is not None
        }
        return {"step": 0, "momentum": buffers}


@dataclass
class Adam(InnerOptimizer):
    """Adam / AdamW as torch.optim.Adam(W), made safe to differentiate.

    ``sqrt(v)`` has an infinite derivative at ``v = 0`` (any parameter whose gradient is exactly
    zero, e.g. behind a dead ReLU), which turns a hypergradient into NaN. The denominator is
    therefore ``sqrt(v_hat + eps_root) + eps``; with the default ``eps_root = 1e-16`` the step
    differs from torch's by less than 1e-8 relative where ``v_hat >> 1e-16``.
    """

    lr: Setting
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eps_root: float = 1e-16
    weight_decay: Setting = 0.0
    decoupled: bool = False  # AdamW

    def init(self, params: Params) -> State:
        return {"step": {}, "m": {}, "v": {}}  # step counts per parameter, as torch keeps them

    def l2(self, hyper: Params) -> float | Tensor:
        if self.decoupled and (callable(self.weight_decay) or self.weight_decay != 0.0):
            raise SlemError(
                "AdamW's decoupled weight decay has no stationary loss for the implicit "
                "hypergradient; use Adam(weight_decay=...) (an L2 penalty), SGD, or unrolled"
            )
        return 0.0 if self.decoupled else resolve(self.weight_decay, hyper)

    def update(
        self, params: Params, grads: Params, state: State, hyper: Params
    ) -> tuple[Params, State]:
        lr, wd = resolve(self.lr, hyper), resolve(self.weight_decay, hyper)
        b1, b2 = self.betas
        steps: dict[str, int] = {}
        has_wd = callable(self.weight_decay) or self.weight_decay != 0.0
        new_params: Params = {}
        ms: Params = {}
        vs: Params = {}
        for name, p in params.items():
            g = grads[name]
            step = steps[name] = _step_of(state, name) + 1
            c1, c2 = 1.0 - b1**step, 1.0 - b2**step
            if has_wd and not self.decoupled:
                g = g + wd * p
            m0, v0 = state["m"].get(name), state["v"].get(name)
            m = (1.0 - b1) * g if m0 is None else b1 * m0 + (1.0 - b1) * g
            v = (1.0 - b2) * g * g if v0 is None else b2 * v0 + (1.0 - b2) * g * g
            ms[name], vs[name] = m, v
            denom = torch.sqrt(v / c2 + self.eps_root) + self.eps
            update = (m / c1) / denom
            if has_wd and self.decoupled:
                update = update + wd * p
            new_params[name] = p - lr * update
        return new_params, {"step": steps, "m": ms, "v": vs}

    def state_from_torch(self, optimizer: torch.optim.Optimizer, params: Params) -> State:
        ids = {id(p): name for name, p in params.items()}
        m, v, steps = {}, {}, {}
        for p, s in optimizer.state.items():
            if id(p) in ids and "exp_avg" in s:
                name = ids[id(p)]
                m[name], v[name] = s["exp_avg"].detach(), s["exp_avg_sq"].detach()
                steps[name] = int(s["step"])
        return {"step": steps, "m": m, "v": v}


def _step_of(state: State, name: str) -> int:
    step = state["step"]
    return int(step.get(name, 0)) if isinstance(step, dict) else int(step)


def from_torch(
    optimizer: torch.optim.Optimizer,
    params: Params,
    lr: Setting | None = None,
    weight_decay: Setting | None = None,
) -> tuple[InnerOptimizer, State]:
    """The differentiable twin of a ``torch.optim`` optimizer and its current state, so a
    virtual step takes the step ``optimizer.step()`` will take (momentum, Nesterov, weight
    decay, Adam's moments). Settings are read from the first parameter group; ``lr`` and
    ``weight_decay`` (floats or functions of the hyperparameters) replace its own.

    Raises:
        SlemError: the optimizer is not ``torch.optim.SGD``, ``Adam`` or ``AdamW``, or uses an
            option the twin does not follow (AMSGrad, maximize).
    """
    group = optimizer.param_groups[0]
    rate: Setting = group["lr"] if lr is None else lr
    decay: Setting = group["weight_decay"] if weight_decay is None else weight_decay
    if group.get("maximize") or group.get("amsgrad"):
        option = "maximize" if group.get("maximize") else "amsgrad"
        raise SlemError(
            f"the virtual step cannot follow {type(optimizer).__name__}({option}=True); turn "
            f"{option} off or take a plain SGD virtual step"
        )
    opt: InnerOptimizer
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        opt = Adam(
            lr=rate,
            betas=tuple(group["betas"]),
            eps=group["eps"],
            weight_decay=decay,
            decoupled=isinstance(optimizer, torch.optim.AdamW),
        )
    elif isinstance(optimizer, torch.optim.SGD):
        opt = SGD(
            lr=rate,
            momentum=group["momentum"],
            weight_decay=decay,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
        )
    else:
        raise SlemError(
            f"the virtual step follows torch.optim.SGD, Adam and AdamW, not "
            f"{type(optimizer).__name__}; use one of them or take a plain SGD virtual step"
        )
    return opt, opt.state_from_torch(optimizer, params)
