"""One training loop for every learner.

:class:`Loop` drives a :class:`Learner` over its epochs: each epoch's steps come from the
learner's source (:meth:`Learner.epoch_steps`: the batches of one task, or the iterations of a
meta-trainer that samples its own tasks), and progress, logging and checkpoints are callbacks
(:mod:`slem.train.callbacks`). It stops cleanly on a request, Ctrl-C, a non-finite value or a
zero hypergradient. The learners: :class:`~slem.train.Trainer` (one task; every method) and
:class:`MetaLearner` (meta-training across many small tasks: the learned optimizer, the learned
black-box optimizer).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from slem.train.checkpoint_io import load_checkpoint_into, restore_rng, rng_state, save_atomic
from slem.train.guard import NonFiniteLoss, TrainingStopped, ZeroHypergradient
from slem.train.progress import Progress

if TYPE_CHECKING:
    from slem.train.callbacks import Callback

#: errors that end a run early, with the reason the callbacks' ``on_stop`` is given
STOPS: tuple[tuple[type[Exception], str], ...] = (
    (NonFiniteLoss, "non-finite loss"),
    (ZeroHypergradient, "zero hypergradient"),
)


class Schedule(Protocol):
    """How long a learner runs (a trainer's :class:`~slem.train.plan.Plan`, :class:`Iterations`)."""

    @property
    def total_epochs(self) -> int: ...

    @property
    def total_steps(self) -> int: ...

    def position(self, epoch: int, step: int) -> str:
        """Where a run stands for a progress line, e.g. ``epoch 3/30`` (``epoch``: 1-based)."""
        ...


class Learner(Protocol):
    """What :class:`Loop` drives.

    Attributes:
        label: names the run in progress lines.
        plan: epochs and steps in all.
        progress: counters, per-epoch history, elapsed time (saved in checkpoints).
        callbacks: called at the start, after every step and epoch, on a stop, at the end.
    """

    progress: Progress
    callbacks: list[Callback]

    @property
    def label(self) -> str: ...

    @property
    def plan(self) -> Schedule: ...

    def on_epoch_start(self) -> None:
        """Before the first step of an epoch (not again when resuming mid-epoch)."""

    def epoch_steps(self) -> Sequence[Any]:
        """The current epoch's steps, the same on every call for a given epoch (a resumed run
        continues at ``progress.step_in_epoch``)."""
        ...

    def step(self, batch: Any) -> dict[str, float]:
        """One step on an item of :meth:`epoch_steps`; its statistics (e.g. ``loss``)."""
        ...

    def end_epoch(self) -> dict[str, Any]:
        """Close the epoch (:meth:`Progress.close_epoch`); its row of the history."""
        ...

    def finish(self) -> Any:
        """What the run returns when every epoch is done."""

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write everything needed to continue exactly (atomic)."""
        ...


class Loop:
    """One run of a :class:`Learner` from where it stands to the end of its plan.

    ``progress``: add a :class:`~slem.train.ProgressBar` on stderr unless the learner's
    callbacks have one.
    """

    def __init__(self, learner: Learner, progress: bool = True) -> None:
        self.learner = learner
        self.callbacks = list(learner.callbacks)
        from slem.train.callbacks import ProgressBar

        if progress and not any(isinstance(cb, ProgressBar) for cb in self.callbacks):
            from rich.console import Console

            self.callbacks.append(ProgressBar(learner.label, Console(stderr=True)))
        self._steps: Sequence[Any] | None = None  # the current epoch's, once it has begun
        self._started = 0.0

    def run(self) -> Any:
        """Run to the end; the callbacks see the start, every step, every epoch, the end.
        Returns the learner's :meth:`~Learner.finish`.

        Raises:
            TrainingStopped: a stop was requested (Ctrl-C, ``request_stop``).
            NonFiniteLoss: a loss, hypergradient or parameter became NaN or infinite.
            ZeroHypergradient: an epoch's every hypergradient was exactly 0.
        """
        t = self.learner
        saved, t.callbacks = t.callbacks, self.callbacks  # the learner's hooks see them too
        try:
            self.start()
            try:
                while not self.done:
                    self.after_step(t.step(self.next_batch()))
            except KeyboardInterrupt:  # may land mid-step: the last checkpoint is kept
                self._stopped("aborted")
                raise TrainingStopped("aborted") from None
            except TrainingStopped as exc:
                self._stopped(exc.reason)
                raise
            except (NonFiniteLoss, ZeroHypergradient) as exc:
                self._stopped(next(r for kind, r in STOPS if isinstance(exc, kind)))
                raise
            return self.end()
        finally:
            t.callbacks = saved

    # the parts of :meth:`run`, for a driver that interleaves several learners' steps
    def start(self) -> None:
        """The run (or its resumption) begins: the callbacks' ``on_fit_start``."""
        t, p = self.learner, self.learner.progress
        self._started = time.perf_counter() - p.elapsed
        for cb in self.callbacks:
            cb.on_fit_start(t)
        if p.step_in_epoch > 0 and not self.done:  # resumed mid-epoch
            self._steps = t.epoch_steps()
            if p.step_in_epoch >= len(self._steps):  # saved after the last step, before the end
                self._close_epoch()

    @property
    def done(self) -> bool:
        """Every epoch of the plan is finished."""
        return self.learner.progress.epoch >= self.learner.plan.total_epochs

    def next_batch(self) -> Any:
        """The next step's item of the learner's epoch (the epoch starts here)."""
        p = self.learner.progress
        if self._steps is None:
            if p.step_in_epoch == 0:  # not again when resuming mid-epoch
                self.learner.on_epoch_start()
            self._steps = self.learner.epoch_steps()
        return self._steps[p.step_in_epoch]

    def after_step(self, stats: dict[str, float]) -> None:
        """Count the step, record its ``stats``, call the callbacks, close a finished epoch.

        Raises:
            TrainingStopped: a stop was requested during the step.
        """
        t, p = self.learner, self.learner.progress
        assert self._steps is not None, "after_step follows next_batch"
        p.step_in_epoch += 1
        p.global_step += 1
        p.elapsed = time.perf_counter() - self._started
        p.record(stats)
        for cb in self.callbacks:
            cb.on_step_end(t, stats)
        if p.stop is not None:
            raise TrainingStopped(p.stop)
        if p.step_in_epoch >= len(self._steps):
            self._close_epoch()

    def _close_epoch(self) -> None:
        self._steps = None
        metrics = self.learner.end_epoch()
        for cb in self.callbacks:
            cb.on_epoch_end(self.learner, metrics)

    def end(self) -> Any:
        """The learner's :meth:`~Learner.finish`, passed to the callbacks' ``on_fit_end``."""
        result = self.learner.finish()
        for cb in self.callbacks:
            cb.on_fit_end(self.learner, result)
        return result

    def _stopped(self, reason: str) -> None:
        for cb in self.callbacks:
            cb.on_stop(self.learner, reason)


@dataclass(frozen=True)
class Iterations:
    """The plan of a meta-trainer: ``total`` meta steps in (about) ten epochs, so a progress
    line outside a terminal comes every tenth of the run."""

    total: int

    @property
    def per_epoch(self) -> int:
        return max(1, math.ceil(self.total / 10))

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.total / self.per_epoch)

    @property
    def total_steps(self) -> int:
        return self.total

    def epoch(self, epoch: int) -> range:
        """The meta steps (0-based iteration numbers) of ``epoch``."""
        return range(epoch * self.per_epoch, min((epoch + 1) * self.per_epoch, self.total))

    def position(self, epoch: int, step: int) -> str:
        return f"iteration {step}/{self.total}"


class MetaLearner(ABC):
    """A meta-trainer that learns one methodology across many small tasks it samples itself
    (a population of optimizees, a family of functions), run by :class:`Loop`.

    Subclasses set ``net``, ``meta_optimizer``, ``generator`` (every task draw comes from it),
    ``label`` and ``plan`` (:class:`Iterations`) and implement :meth:`meta_step`; progress,
    checkpoints (:class:`~slem.train.CheckpointCallback`), exact resume and clean stops are
    shared with every trainer.

    Attributes:
        history: one row per meta step (``iteration``, ``meta_loss``, ...).
    """

    net: nn.Module
    meta_optimizer: torch.optim.Optimizer
    generator: torch.Generator
    label: str
    plan: Iterations

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        self.progress = Progress.start(None)
        self.history: list[dict[str, Any]] = []

    @abstractmethod
    def meta_step(self) -> float:
        """One meta-gradient step; appends a row to ``history``; returns the meta loss.

        Raises:
            NonFiniteLoss: the meta loss is NaN or infinite.
        """

    @property
    def iteration(self) -> int:
        """Meta steps taken."""
        return self.progress.global_step

    @property
    def elapsed(self) -> float:
        """Seconds of meta-training so far."""
        return self.progress.elapsed

    def request_stop(self, reason: str) -> None:
        """Stop after the current meta step (signal handlers call this)."""
        self.progress.stop = reason

    def fit(self, progress: bool = True) -> nn.Module:
        """Meta-train to ``plan.total_steps`` (from a loaded checkpoint); returns the net.

        Raises:
            TrainingStopped: a stop was requested (Ctrl-C, :meth:`request_stop`).
            NonFiniteLoss: the meta loss became NaN or infinite.
        """
        result: nn.Module = Loop(self, progress).run()
        return result

    # what Loop drives
    def on_epoch_start(self) -> None:  # noqa: B027 (nothing to prepare)
        """Nothing to prepare: every task is drawn in :meth:`meta_step`."""

    def epoch_steps(self) -> range:
        return self.plan.epoch(self.progress.epoch)

    def step(self, batch: Any) -> dict[str, float]:
        return {"meta_loss": self.meta_step()}

    def end_epoch(self) -> dict[str, Any]:
        row = {"epoch": self.progress.epoch + 1, "iteration": self.iteration}
        return self.progress.close_epoch(row, math.nan, self.net)  # no best-epoch selection

    def finish(self) -> nn.Module:
        return self.net

    def extra_state(self) -> dict[str, Any]:
        """Subclass state beyond the net, optimizer, progress, history and RNGs."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`extra_state`."""

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where meta-training stands."""
        return {
            "net": self.net.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            **self.progress.state_dict(),
            "meta_history": self.history,
            **rng_state(self.generator),
            "extra": self.extra_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.progress.load_state_dict(state)
        self.history = state["meta_history"]
        restore_rng(state, self.generator)
        self.load_extra_state(state["extra"])

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomic: a kill during the write leaves the previous checkpoint intact."""
        return save_atomic(self.state(), path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from ``path``.

        Raises:
            SlemError: the file is missing, damaged or not a checkpoint of this meta-trainer.
        """
        load_checkpoint_into(
            Path(path), self.load_state, "cpu", ("net", "meta_optimizer", "meta_history")
        )
