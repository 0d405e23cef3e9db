"""A learned black-box optimizer: an RNN that proposes the next query (Chen et al., 2017).

The hook into learning is ``x_{t+1} ~ h(x_1, y_1, ..., x_t, y_t)``: an LSTM reads each query and
its value and outputs a Gaussian over the next query in the unit cube. Observed values are
standardised by the history's own running mean and spread before the LSTM sees them, so the
proposer does not depend on the objective's units and applies as is to functions it never saw.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.methodology.base import Methodology

#: (h, c) of each layer, each (batch, hidden)
RNNState = list[tuple[Tensor, Tensor]]


class RNNBlackBoxOptimizer(Methodology):
    """Learned black-box optimizer (Chen et al., 2017): what it learns is a search strategy,
    where to look next given everything observed so far (explore, then exploit), meta-trained
    on families of synthetic functions. An LSTM over the history of (query, standardised value)
    outputs a Gaussian over the next query's logit; queries are sampled and squashed into
    [0, 1]^d."""

    kind: ClassVar[str] = "learned_bbo"
    used_with: ClassVar[str] = "slem bbo run ARTIFACT"
    input_features: ClassVar[tuple[str, ...]] = ("query x", "standardised value y")

    def __init__(self, dim: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.dim, self.hidden, self.layers = dim, hidden, layers
        self.cells = nn.ModuleList(
            nn.LSTMCell(2 * dim + 3 if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.head = nn.Linear(hidden, 2 * dim)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "hidden": self.hidden, "layers": self.layers}

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> RNNState:
        z = torch.zeros(batch, self.hidden, device=device)
        return [(z, z.clone()) for _ in range(self.layers)]

    def forward(
        self,
        x_prev: Tensor,
        y_prev: Tensor,
        x_best: Tensor,
        y_best: Tensor,
        first: bool,
        state: RNNState,
    ) -> tuple[Tensor, Tensor, RNNState]:
        """Mean and std of the next query's Gaussian in logit space (the query is
        ``sigmoid(mean + std * noise)``), and the new state. The mean is an offset from the
        incumbent (the best query so far), so moving towards or away from it is easy to learn.
        ``y_prev`` and ``y_best`` are standardised; ``first`` marks the step with no history."""
        flag = torch.full_like(y_prev[:, None], 1.0 if first else 0.0)
        inp = torch.cat([x_prev, y_prev[:, None], x_best, y_best[:, None], flag], dim=1)
        new_state: RNNState = []
        for cell, (h, c) in zip(self.cells, state, strict=True):
            h, c = cell(inp, (h, c))
            new_state.append((h, c))
            inp = h
        offset, spread = self.head(inp).chunk(2, dim=1)
        # With the untrained head (spread ~ 1.7), sigmoid(mean + std * e) is close to uniform
        # on [0, 1]: search starts as random search and learns from there.
        mean = torch.logit(x_best.clamp(1e-4, 1 - 1e-4)) + offset
        return mean, F.softplus(spread + 1.5) + 1e-3, new_state


class History:
    """The observations of a batch of searches, with the running standardisation the proposer
    reads and the best value so far."""

    def __init__(self) -> None:
        self.ys: list[Tensor] = []

    def standardise(self, y: Tensor) -> Tensor:
        """Record ``y`` and return it standardised by all values seen so far."""
        self.ys.append(y)
        return self.standardise_value(y)

    def standardise_value(self, y: Tensor) -> Tensor:
        if len(self.ys) < 2:
            return torch.zeros_like(y)
        stacked = torch.stack(self.ys)  # (t, B)
        mean, std = stacked.mean(0), stacked.std(0).clamp_min(1e-6)
        return (y - mean) / std


def propose_and_observe(
    net: RNNBlackBoxOptimizer,
    objective: Any,
    steps: int,
    batch: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Run the proposer for ``steps`` queries on ``objective`` (a batch of ``batch``
    functions); returns queries (steps, B, d) and values (steps, B). Differentiable when the
    objective is."""
    state = net.initial_state(batch, device)
    x = torch.zeros(batch, net.dim, device=device)
    x_best = torch.full((batch, net.dim), 0.5, device=device)
    y_in = torch.zeros(batch, device=device)
    y_best: Tensor | None = None
    history = History()
    xs, ys = [], []
    for t in range(steps):
        best_in = (
            history.standardise_value(y_best) if y_best is not None else torch.zeros_like(y_in)
        )
        mean, std, state = net(x, y_in, x_best, best_in, t == 0, state)
        noise = torch.randn(mean.shape, generator=generator).to(device)
        x = torch.sigmoid(mean + std * noise)
        y = objective(x)
        xs.append(x)
        ys.append(y)
        if y_best is None:
            x_best, y_best = x, y
        else:
            better = y < y_best
            x_best = torch.where(better[:, None], x, x_best)
            y_best = torch.where(better, y, y_best)
        y_in = history.standardise(y)
    return torch.stack(xs), torch.stack(ys)
