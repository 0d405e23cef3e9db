"""The model's real optimizer and its learning-rate schedule, as ``optim`` says."""

from __future__ import annotations

import math
from typing import Any

import torch

from slem.methodology import LearnedOptimizer, LSTMOptimizerNet, Methodology
from slem.train.config import OptimConfig, TrainConfig


def make_optimizer(
    params: Any, config: TrainConfig, methodology: Methodology | None = None
) -> torch.optim.Optimizer:
    """The real optimizer: a learned one when ``methodology`` is a learned optimizer, else
    ``config.optim``'s (its rate is set every step from the schedule)."""
    if isinstance(methodology, LSTMOptimizerNet):
        return LearnedOptimizer(params, methodology)
    o = config.optim
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )


def scheduled_lr(o: OptimConfig, t: float) -> float:
    """The rate of ``o.schedule`` at the fraction ``t`` of training (clipped to 1): cosine
    from ``o.lr`` to 0, step (times ``o.gamma`` at each of ``o.milestones``), onecycle
    (linear warm-up from ``lr / 25`` over 30%, then cosine down to ``lr / 1e4``) or
    constant."""
    t = min(t, 1.0)
    if o.schedule == "cosine":
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if o.schedule == "step":
        return o.lr * o.gamma ** sum(t >= m for m in o.milestones)
    if o.schedule == "onecycle":
        if t < 0.3:
            return o.lr * (1 / 25 + (1 - 1 / 25) * t / 0.3)
        return o.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * (t - 0.3) / 0.7)))
    return o.lr
