"""The training loops.

:class:`Loop` drives a :class:`~slem.train.Trainer` over its epochs and steps: the epoch's
sample order from ``(seed, epoch)``, the scheduled rate, one draw of the model's randomness per
step, the callbacks (progress, logging, checkpoints), and a clean stop on a request, Ctrl-C, a
non-finite value or a zero hypergradient. :class:`MetaLoop` is the loop of meta-trainers that
learn across many small tasks (a learned optimizer, a learned black-box optimizer): repeat a
meta step, checkpoint, stop cleanly when asked.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slem.bilevel import same_randomness
from slem.train.checkpoint_io import load_checkpoint_into, save_atomic
from slem.train.guard import NonFiniteLoss, TrainingStopped, ZeroHypergradient

if TYPE_CHECKING:
    from slem.train.trainer import Trainer, TrainResult

#: errors that end a run early, with the reason the callbacks' ``on_stop`` is given
STOPS: tuple[tuple[type[Exception], str], ...] = (
    (NonFiniteLoss, "non-finite loss"),
    (ZeroHypergradient, "zero hypergradient"),
)


class Loop:
    """One run of ``trainer`` from where it stands to the end of its epochs.

    ``progress``: add a :class:`~slem.train.ProgressBar` on stderr unless the trainer's
    callbacks have one.
    """

    def __init__(self, trainer: Trainer, progress: bool = True) -> None:
        self.trainer = trainer
        self.callbacks = list(trainer.callbacks)
        from slem.train.callbacks import ProgressBar

        if progress and not any(isinstance(cb, ProgressBar) for cb in self.callbacks):
            from rich.console import Console

            label = f"{trainer.config.method} {trainer.task.name}"
            self.callbacks.append(ProgressBar(label, Console(stderr=True)))

    def run(self) -> TrainResult:
        """Train and evaluate; the callbacks see the start, every step, every epoch, the end.

        Raises:
            TrainingStopped: a stop was requested (Ctrl-C, ``request_stop``).
            NonFiniteLoss: a loss, hypergradient or parameter became NaN or infinite.
            ZeroHypergradient: an epoch's every hypergradient was exactly 0.
        """
        t = self.trainer
        saved, t.callbacks = t.callbacks, self.callbacks  # the trainer's hooks see them too
        try:
            for cb in self.callbacks:
                cb.on_fit_start(t)
            try:
                self._epochs()
            except KeyboardInterrupt:  # may land mid-step: the last checkpoint is kept
                self._stopped("aborted")
                raise TrainingStopped("aborted") from None
            except TrainingStopped as exc:
                self._stopped(exc.reason)
                raise
            except (NonFiniteLoss, ZeroHypergradient) as exc:
                self._stopped(next(r for kind, r in STOPS if isinstance(exc, kind)))
                raise
            result = t.finish()
            for cb in self.callbacks:
                cb.on_fit_end(t, result)
            return result
        finally:
            t.callbacks = saved

    def _epochs(self) -> None:
        t = self.trainer
        started = time.perf_counter() - t.progress.elapsed
        while t.progress.epoch < t.plan.total_epochs:
            if t.progress.step_in_epoch == 0:  # not again when resuming mid-epoch
                t.on_epoch_start()
            x, y, steps, bs = t.epoch_data()
            seed = t.config.seed * 100_003 + t.progress.epoch
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
            perm = perm.to(t.device)
            while t.progress.step_in_epoch < steps:
                idx = perm[t.progress.step_in_epoch * bs : (t.progress.step_in_epoch + 1) * bs]
                for g in t.optimizer.param_groups:
                    g["lr"] = t.lr_at(t.progress.global_step)
                with same_randomness():  # one draw of the model's randomness per step
                    stats = t.train_step(x[idx], y[idx], idx)
                t.progress.step_in_epoch += 1
                t.progress.global_step += 1
                t.progress.elapsed = time.perf_counter() - started
                t.progress.record(stats)
                for cb in self.callbacks:
                    cb.on_step_end(t, stats)
                if t.progress.stop is not None:
                    raise TrainingStopped(t.progress.stop)
            metrics = t.end_epoch()
            for cb in self.callbacks:
                cb.on_epoch_end(t, metrics)

    def _stopped(self, reason: str) -> None:
        for cb in self.callbacks:
            cb.on_stop(self.trainer, reason)


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
        save_atomic(self.state(), path)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from ``path``; a damaged or foreign file is a one-line SlemError."""
        load_checkpoint_into(path, self.load_state, "cpu", ("net", "meta_optimizer", "iteration"))


class MetaProgress:
    """Progress of a meta-training loop: iterations, meta loss, time left. A live bar in a
    terminal; elsewhere (a pipe, a log) one plain line per tenth of the iterations."""

    def __init__(self, total: int, label: str) -> None:
        from rich import get_console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.total, self.label = total, label
        self.console = get_console()
        self.progress: Any = None
        self.every = max(1, total // 10)
        self.started = time.perf_counter()
        self.first: int | None = None
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn(label, markup=False),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}  meta loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("meta", total=total, loss="-")
        self.progress.start()

    def update(self, meta: Any) -> None:
        loss = meta.history[-1]["meta_loss"]
        if self.progress is not None:
            self.progress.update(self.task, completed=meta.iteration, loss=f"{loss:.3f}")
            return
        if self.first is None:
            self.first = meta.iteration - 1
        if meta.iteration % self.every and meta.iteration != self.total:
            return
        from rich.text import Text

        done = meta.iteration - self.first
        left = (time.perf_counter() - self.started) / done * (self.total - meta.iteration)
        self.console.print(
            Text(
                f"{self.label}  {meta.iteration}/{self.total}  meta loss {loss:.3f}  "
                f"ETA {int(left) // 60}:{int(left) % 60:02d}"
            ),
            soft_wrap=True,
            highlight=False,
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
