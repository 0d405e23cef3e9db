"""Where a run stands: :class:`Progress` (epoch and step counters, the per-epoch history, the
best epoch, step timings), saved in every checkpoint and restored exactly on resume (as
Hugging Face's ``TrainerState``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

#: the checkpoint keys of a progress (a checkpoint stores them at its top level)
FIELDS = (
    "epoch",
    "step_in_epoch",
    "global_step",
    "history",
    "best",
    "timings",
    "elapsed",
    "epoch_stats",
)


@dataclass
class Progress:
    """A run's progress.

    Attributes:
        epoch: epochs finished (0-based index of the current one).
        step_in_epoch: steps taken in the current epoch.
        global_step: steps taken in all.
        history: one row per finished epoch (metrics and step statistics' means).
        best: the best epoch so far: ``val_score`` (higher is better), ``epoch`` (1-based;
            -1: none yet) and the model's ``state``.
        timings: seconds of every ``plain`` and ``meta`` step.
        elapsed: seconds of training so far.
        epoch_stats: the current epoch's step statistics (e.g. ``loss``,
            ``hypergrad_norm``).
        stop: why a stop was requested (None: none was).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, list[float]] = field(default_factory=lambda: {"plain": [], "meta": []})
    elapsed: float = 0.0
    epoch_stats: dict[str, list[float]] = field(default_factory=dict)
    stop: str | None = None

    @classmethod
    def start(cls, initial_best: float | None) -> Progress:
        """A run at its start; ``initial_best``: the score any first epoch beats."""
        return cls(best={"val_score": initial_best, "epoch": -1, "state": None})

    def record(self, stats: dict[str, float]) -> None:
        """Add a step's statistics to the epoch's."""
        for name, value in stats.items():
            self.epoch_stats.setdefault(name, []).append(value)

    def close_epoch(self, row: dict[str, Any], score: float, model: nn.Module) -> dict[str, Any]:
        """End the epoch: ``row`` plus the means of its step statistics (``train_*``) joins
        the history; the model's state is kept when ``score`` is the best so far."""
        for name, values in self.epoch_stats.items():
            row[f"train_{name}"] = float(np.mean(values)) if values else None
        self.history.append(row)
        best = self.best["val_score"]
        if math.isfinite(score) and (best is None or score > best):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best = {"val_score": score, "epoch": self.epoch + 1, "state": state}
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_stats = {}
        return row

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in FIELDS:
            setattr(self, name, state[name])
