"""A learned optimizer: the coordinatewise LSTM of Andrychowicz et al. (2016).

The hook into learning is ``update_i = h(grad_i, memory_i)`` for every parameter coordinate
``i``: one small LSTM, shared by all coordinates, reads each coordinate's gradient and keeps a
memory per coordinate. Sharing makes it indifferent to the number and shapes of the parameters,
so an optimizer meta-trained on small MLPs can drive larger networks.
:class:`LearnedOptimizer` wraps a trained net as a ``torch.optim.Optimizer``;
:class:`LearnedInnerOptimizer` is its differentiable twin for the bilevel engine, with the
net's parameters as the hyperparameters (how it is meta-trained).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from slem.bilevel import InnerOptimizer, Params
from slem.errors import SlemError
from slem.methodology.base import Methodology

#: Per layer (h, c), each of shape (coordinates, hidden).
LSTMState = list[tuple[Tensor, Tensor]]


def preprocess_gradient(grad: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al.'s log-magnitude/sign preprocessing, shape (n,) -> (n, 2).

    Gradients span many orders of magnitude; the LSTM reads ``(log|g| / p, sign g)`` when
    ``|g| >= e^-p`` and ``(-1, e^p g)`` below, so tiny and huge gradients both land in a
    range it can use, and the sign is never lost."""
    g = grad.reshape(-1, 1)
    big = g.abs() >= math.exp(-p)
    log_part = torch.where(big, g.abs().clamp_min(1e-38).log() / p, torch.full_like(g, -1.0))
    sign_part = torch.where(big, g.sign(), g * math.exp(p))
    return torch.cat([log_part, sign_part], dim=1)


class LSTMOptimizerNet(Methodology):
    """Learned optimizer (Andrychowicz et al., 2016): what it learns is the update rule itself,
    the step to take on each coordinate given the history of that coordinate's gradients. A
    2-layer LSTM shared by all coordinates (memory per coordinate) reads the preprocessed
    gradient and outputs ``output_scale * step``."""

    kind: ClassVar[str] = "learned_optimizer"
    input_features: ClassVar[tuple[str, ...]] = ("gradient (log-magnitude, sign)",)

    def __init__(
        self, hidden: int = 20, layers: int = 2, output_scale: float = 0.1, p: float = 10.0
    ) -> None:
        super().__init__()
        self.hidden, self.layers, self.output_scale, self.p = hidden, layers, output_scale, p
        self.cells = nn.ModuleList(
            nn.LSTMCell(2 if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():  # start near "no step": the optimizer learns to move
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def config(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "layers": self.layers,
            "output_scale": self.output_scale,
            "p": self.p,
        }

    def initial_state(self, n: int, device: torch.device | str = "cpu") -> LSTMState:
        return [
            (torch.zeros(n, self.hidden, device=device), torch.zeros(n, self.hidden, device=device))
            for _ in range(self.layers)
        ]

    def forward(self, grad: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """The update for a flat gradient of ``n`` coordinates and the new memory."""
        x = preprocess_gradient(grad, self.p)
        new_state: LSTMState = []
        for cell, (h, c) in zip(self.cells, state, strict=True):
            h, c = cell(x, (h, c))
            new_state.append((h, c))
            x = h
        return self.output_scale * self.out(x).squeeze(1), new_state


class LearnedInnerOptimizer(InnerOptimizer):
    """The net as a differentiable inner optimizer of :mod:`slem.bilevel`: its update is
    ``theta + net(flat grad, memory)`` with the net's parameters taken from ``hyper``
    (``torch.func.functional_call``), so a hypergradient for ``hyper`` is a meta-gradient of
    the LSTM (Andrychowicz et al. 2016, eq. 1-2: ``theta_{t+1} = theta_t + g_t``,
    ``[g_t, h_{t+1}] = m(grad_t, h_t, phi)``).

    ``hyper`` holds the net's parameters under their ``named_parameters`` names (a
    :class:`~slem.bilevel.BilevelProblem` built with ``hyper=net``); those it lacks are the
    module's own. The state is ``{"memory": LSTMState}``, the per-coordinate LSTM memory of
    every coordinate of ``params`` in their order (``layers`` pairs ``(h, c)``, each of shape
    ``(P, hidden)``); :meth:`init` is the zero memory. Use ``first_order``: the gradient the
    net reads is its input, as in the paper.
    """

    def __init__(self, net: LSTMOptimizerNet) -> None:
        self.net = net

    def init(self, params: Params) -> dict[str, Any]:
        n = sum(p.numel() for p in params.values())
        return {"memory": self.net.initial_state(n, next(iter(params.values())).device)}

    def update(
        self, params: Params, grads: Params, state: dict[str, Any], hyper: Params
    ) -> tuple[Params, dict[str, Any]]:
        flat = torch.cat([grads[name].reshape(-1) for name in params])
        # the net ties no weights: skip functional_call's search for tied ones (per step)
        step, memory = functional_call(self.net, hyper, (flat, state["memory"]), tie_weights=False)
        steps = step.split([p.numel() for p in params.values()])
        new_params = {
            name: p + s.view(p.shape) for (name, p), s in zip(params.items(), steps, strict=True)
        }
        return new_params, {"memory": memory}


class LearnedOptimizer(torch.optim.Optimizer):
    """A frozen :class:`LSTMOptimizerNet` as a drop-in ``torch.optim.Optimizer``::

        opt = LearnedOptimizer(model.parameters(), net)
        loss.backward(); opt.step(); opt.zero_grad()

    Each parameter group's coordinates go through the net in one batch; ``scale`` (default 1)
    multiplies the learned update. ``lr`` is accepted and ignored, so learning-rate schedulers
    and loops that set it keep working: the net chooses the step sizes.
    """

    def __init__(
        self, params: Iterable[Any], net: LSTMOptimizerNet, scale: float = 1.0, lr: float = 1.0
    ) -> None:
        if not isinstance(net, LSTMOptimizerNet):
            raise SlemError(f"LearnedOptimizer needs a learned_optimizer net, not {type(net)}")
        super().__init__(params, {"scale": scale, "lr": lr})
        self.net = net
        for p in net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            if all(p.grad is None for p in params):
                continue
            flat = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for p in params
                ]
            )
            state = self._group_state(group, params, flat)
            update, new_state = self.net(flat.to(self.net.out.weight.dtype), state)
            group_state = self.state[params[0]]
            group_state["memory"] = new_state
            group_state["sizes"] = [p.numel() for p in params]
            offset = 0
            for p in params:
                n = p.numel()
                p.add_(update[offset : offset + n].view_as(p).to(p.dtype), alpha=group["scale"])
                offset += n
        return loss

    def _group_state(self, group: dict[str, Any], params: list[Tensor], flat: Tensor) -> LSTMState:
        """The group's per-coordinate memory (kept on its first parameter's state)."""
        st = self.state[params[0]]
        sizes = [p.numel() for p in params]
        if "memory" not in st:
            return self.net.initial_state(len(flat), flat.device)
        if st["sizes"] != sizes:
            raise SlemError(
                f"the learned optimizer's memory covers parameters of sizes {st['sizes']}, but "
                f"the model now has {sizes}: an optimizer state belongs to one model; start a "
                "fresh LearnedOptimizer for another"
            )
        memory: LSTMState = st["memory"]
        return memory

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but a memory whose shape does not fit these parameters is an error."""
        saved = state_dict.get("state", {})
        groups = state_dict.get("param_groups", [])
        for group, saved_group in zip(self.param_groups, groups, strict=False):
            ids = saved_group.get("params", [])
            if not ids or ids[0] not in saved or "sizes" not in saved[ids[0]]:
                continue
            want = [p.numel() for p in group["params"]]
            got = saved[ids[0]]["sizes"]
            if got != want[: len(got)] or len(got) != len(want):
                raise SlemError(
                    f"this learned-optimizer state was saved for parameters of sizes {got}, "
                    f"not {want}: resume it with the model it was saved with"
                )
        super().load_state_dict(state_dict)
