"""Callbacks: progress, metric logging and checkpoints live outside the training loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slem.bilevel import Hypergrad
    from slem.train.trainer import Trainer, TrainResult


class Callback:
    """Hooks a trainer calls; every hook is optional."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Training (or resumed training) begins."""

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        """One optimizer step is done; the trainer is in a consistent state."""

    def on_hypergradient(self, trainer: Trainer, result: Hypergrad) -> None:
        """A meta step computed ``result`` (:class:`~slem.bilevel.Hypergrad`: ``grads`` per
        hyperparameter name, ``outer_loss``, ``diagnostics``), before the meta optimizer
        steps on it. ``grads`` are the trainer's own tensors: copy what you keep."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """An epoch is done and evaluated; ``metrics`` is its row of the history."""

    def on_stop(self, trainer: Trainer, reason: str) -> None:
        """Training stops early (interrupt, kill, non-finite loss) in a consistent state."""

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        """Training finished."""


class CheckpointCallback(Callback):
    """Write ``checkpoint.pt`` every ``every`` steps, after every epoch, and on any stop, so a
    Ctrl-C, a kill or a crash loses at most ``every`` steps."""

    def __init__(self, path: str | Path, every: int = 200) -> None:
        self.path = Path(path)
        self.every = every

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.global_step % self.every == 0:
            trainer.save_checkpoint(self.path)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        trainer.save_checkpoint(self.path)

    def on_stop(self, trainer: Trainer, reason: str) -> None:
        # after a blow-up or a hard interrupt (possibly mid-step) the last checkpoint is the
        # last consistent state; a requested stop happens between steps and is saved
        if reason not in ("non-finite loss", "aborted"):
            trainer.save_checkpoint(self.path)


class JsonlLogger(Callback):
    """One JSON line per epoch in ``metrics.jsonl`` (rewritten from history on resume)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: Trainer) -> None:
        with self.path.open("w") as fh:
            for row in trainer.history:
                fh.write(json.dumps(row) + "\n")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(metrics) + "\n")


class ProgressBar(Callback):
    """A rich progress bar: epoch, training loss, validation accuracy and ETA."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self._progress: Any = None
        self._task: Any = None
        self._val = float("nan")

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        if trainer.history:
            self._val = trainer.history[-1].get("val_accuracy", float("nan"))
        self._task = self._progress.add_task(
            self.description,
            total=trainer.total_steps,
            completed=trainer.global_step,
            status="",
        )

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        status = (
            f"epoch {trainer.epoch + 1}/{trainer.total_epochs}  loss {stats['loss']:.3f}"
            f"  val acc {self._val:.3f}"
        )
        self._progress.update(self._task, completed=trainer.global_step, status=status)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._val = metrics.get("val_accuracy", float("nan"))

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_stop(self, trainer: Trainer, reason: str) -> None:
        self._close()

    def on_fit_end(self, trainer: Trainer, result: TrainResult) -> None:
        self._close()
