"""The loop shared by meta-trainers that learn across many small tasks (a learned optimizer, a
learned black-box optimizer): repeat a meta step, checkpoint, stop cleanly when asked."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slem.train.trainer import TrainingStopped


class MetaLoop(ABC):
    """Subclasses set ``net``, ``meta_optimizer``, ``generator`` and ``iterations`` and
    implement :meth:`meta_step`; the loop, history, checkpoints and resume are here."""

    net: nn.Module
    meta_optimizer: torch.optim.Optimizer
    generator: torch.Generator
    iterations: int
    checkpoint_every: int

    def __init__(self) -> None:
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self._stop: str | None = None

    @abstractmethod
    def meta_step(self) -> float:
        """One meta-gradient step; appends a row to ``history``; returns the meta loss."""

    def request_stop(self, reason: str) -> None:
        self._stop = reason

    def fit(
        self,
        checkpoint: Path | None = None,
        on_iteration: Callable[[Any], None] | None = None,
        progress: str | None = None,
    ) -> nn.Module:
        """Meta-train up to ``iterations``; checkpoints every ``checkpoint_every`` and when
        asked to stop (then raises TrainingStopped). ``progress``: a bar with this label."""
        bar = MetaProgress(self.iterations, progress) if progress else None
        started = time.perf_counter() - self.elapsed
        try:
            while self.iteration < self.iterations:
                self.meta_step()
                self.iteration += 1
                self.elapsed = time.perf_counter() - started
                if on_iteration is not None:
                    on_iteration(self)
                if bar is not None:
                    bar.update(self)
                due = self.iteration % self.checkpoint_every == 0
                if checkpoint is not None and (due or self._stop is not None):
                    self.save_checkpoint(checkpoint)
                if self._stop is not None:
                    raise TrainingStopped(self._stop)
        finally:
            if bar is not None:
                bar.close()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        return self.net

    def extra_state(self) -> dict[str, Any]:
        """Subclass state beyond the net, optimizer, history and RNGs."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`extra_state`."""

    def state(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "iteration": self.iteration,
            "history": self.history,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "elapsed": self.elapsed,
            "extra": self.extra_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.iteration, self.history = state["iteration"], state["history"]
        self.elapsed = state["elapsed"]
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.load_extra_state(state["extra"])

    def save_checkpoint(self, path: Path) -> None:
        """Atomic: a kill during the write leaves the previous checkpoint intact."""
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: Path) -> None:
        self.load_state(torch.load(path, map_location="cpu", weights_only=False))


class MetaProgress:
    """A progress bar for a meta-training loop: iterations, meta loss, time left."""

    def __init__(self, total: int, label: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}  meta loss {task.fields[loss]}"),
            TimeRemainingColumn(),
        )
        self.task = self.progress.add_task("meta", total=total, loss="-")
        self.progress.start()

    def update(self, meta: Any) -> None:
        loss = meta.history[-1]["meta_loss"]
        self.progress.update(self.task, completed=meta.iteration, loss=f"{loss:.3f}")

    def close(self) -> None:
        self.progress.stop()
