"""Callbacks: progress, metric logging and checkpoints live outside the training loop."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from slem.errors import SlemError
from slem.rundir import atomic_write_text

if TYPE_CHECKING:
    from slem.bilevel import Hypergrad
    from slem.train.loop import Learner
    from slem.train.trainer import Trainer


class Callback:
    """Hooks the :class:`~slem.train.loop.Loop` calls on its learner (a
    :class:`~slem.train.Trainer` or a :class:`~slem.train.loop.MetaLearner`); every hook is
    optional."""

    def on_fit_start(self, trainer: Learner) -> None:
        """Training (or resumed training) begins."""

    def on_step_end(self, trainer: Learner, stats: dict[str, float]) -> None:
        """One optimizer step is done; the trainer is in a consistent state."""

    def on_hypergradient(self, trainer: Trainer, result: Hypergrad) -> None:
        """A meta step computed ``result`` (:class:`~slem.bilevel.Hypergrad`: ``grads`` per
        hyperparameter name, ``outer_loss``, ``diagnostics``), before the meta optimizer
        steps on it. ``grads`` are the trainer's own tensors: copy what you keep."""

    def on_epoch_end(self, trainer: Learner, metrics: dict[str, Any]) -> None:
        """An epoch is done and evaluated; ``metrics`` is its row of the history."""

    def on_stop(self, trainer: Learner, reason: str) -> None:
        """Training stops early (interrupt, kill, non-finite loss) in a consistent state."""

    def on_fit_end(self, trainer: Learner, result: Any) -> None:
        """Training finished; ``result``: what the run returns (a
        :class:`~slem.train.TrainResult`, a meta-trainer's net)."""


class CheckpointCallback(Callback):
    """Write ``checkpoint.pt`` every ``every`` steps, after every epoch, and on any stop, so a
    Ctrl-C, a kill or a crash loses at most ``every`` steps."""

    def __init__(self, path: str | Path, every: int = 200) -> None:
        self.path = Path(path)
        self.every = every

    def on_step_end(self, trainer: Learner, stats: dict[str, float]) -> None:
        if trainer.progress.global_step % self.every == 0:
            trainer.save_checkpoint(self.path)

    def on_epoch_end(self, trainer: Learner, metrics: dict[str, Any]) -> None:
        trainer.save_checkpoint(self.path)

    def on_stop(self, trainer: Learner, reason: str) -> None:
        # after a blow-up or a hard interrupt (possibly mid-step) the last checkpoint is the
        # last consistent state; a requested stop happens between steps and is saved
        if reason not in ("non-finite loss", "aborted"):
            trainer.save_checkpoint(self.path)


class JsonlLogger(Callback):
    """One JSON line per epoch in ``metrics.jsonl`` (rewritten from history on resume)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: Learner) -> None:
        with self.path.open("w") as fh:
            for row in trainer.progress.history:
                fh.write(json.dumps(row) + "\n")

    def on_epoch_end(self, trainer: Learner, metrics: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(metrics) + "\n")


#: the metric loggers a run may ask for (``TrainConfig.loggers``, ``--logger``)
LoggerName = Literal["csv", "tensorboard"]
LOGGER_NAMES: tuple[str, ...] = get_args(LoggerName)
CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"


class CsvLogger(Callback):
    """``metrics.csv``: one row per epoch, the same rows as ``metrics.jsonl``; the header is
    the union of the rows' keys (in the order they first appear), a missing value is empty,
    a value that is not a number or text is written as JSON. The file is rewritten whole and
    atomically from the history after every epoch (a resumed run's file holds every epoch
    once, and no reader ever sees half a row)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, trainer: Learner) -> None:
        self._write(trainer.progress.history)

    def on_epoch_end(self, trainer: Learner, metrics: dict[str, Any]) -> None:
        history = trainer.progress.history
        self._write(history if history and history[-1] is metrics else [*history, metrics])

    def _write(self, rows: Sequence[dict[str, Any]]) -> None:
        atomic_write_text(self.path, csv_text(rows))


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` as CSV: a header of the union of their keys, then one line per row."""
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(_csv_value(row.get(k)) for k in header)
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


class TensorBoardLogger(Callback):
    """TensorBoard scalars in ``RUN_DIR/tensorboard/`` (``torch.utils.tensorboard``), all on
    the global-step axis: each step's training loss as ``step/loss``, and every numeric entry
    of an epoch's row as ``epoch/KEY`` at the step the epoch ended.

    Events are flushed at the end of every epoch and every ``flush_every`` steps (pass the
    run's ``checkpoint_every`` and put this callback before the checkpoint's: a checkpoint
    then never holds a step whose events are not on disk). A resumed run's writer purges the
    events after its checkpoint's step (TensorBoard's ``purge_step``): the steps trained
    again are logged once."""

    def __init__(self, directory: str | Path, flush_every: int = 200) -> None:
        self.directory = Path(directory)
        self.flush_every = flush_every
        self._writer: Any = None

    def on_fit_start(self, trainer: Learner) -> None:
        writer = summary_writer()
        step = trainer.progress.global_step
        resumed = self.directory.is_dir() and any(self.directory.iterdir())
        self._writer = writer(log_dir=str(self.directory), purge_step=step + 1 if resumed else None)

    def on_step_end(self, trainer: Learner, stats: dict[str, float]) -> None:
        if self._writer is None:
            return
        step = trainer.progress.global_step
        loss = stats.get("loss")
        if loss is not None and _scalar(loss):
            self._writer.add_scalar("step/loss", float(loss), step)
        if step % self.flush_every == 0:
            self._writer.flush()

    def on_epoch_end(self, trainer: Learner, metrics: dict[str, Any]) -> None:
        if self._writer is None:
            return
        step = trainer.progress.global_step
        for key, value in metrics.items():
            if key not in ("epoch", "step") and _scalar(value):
                self._writer.add_scalar(f"epoch/{key}", float(value), step)
        self._writer.flush()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_stop(self, trainer: Learner, reason: str) -> None:
        self._close()

    def on_fit_end(self, trainer: Learner, result: Any) -> None:
        self._close()


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def summary_writer() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        SlemError: the ``tensorboard`` package is not installed (one line: how to install it).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SlemError(
            "the tensorboard logger needs the tensorboard package: pip install "
            "'slem[tensorboard]' (or drop tensorboard from loggers / --logger)"
        ) from None
    return SummaryWriter


def check_loggers(names: Sequence[str]) -> None:
    """Refuse, before a run writes anything, loggers that cannot run here.

    Raises:
        SlemError: an unknown name, or tensorboard without its package.
    """
    for name in names:
        if name not in LOGGER_NAMES:
            raise SlemError(f"logger '{name}' is unknown; use {' or '.join(LOGGER_NAMES)}")
    if "tensorboard" in names:
        summary_writer()


def make_loggers(
    names: Sequence[str], run_dir: str | Path, checkpoint_every: int = 200
) -> list[Callback]:
    """The callbacks of the loggers ``names`` (``csv``, ``tensorboard``) writing into
    ``run_dir``; they go before the checkpoint callback (which saves every
    ``checkpoint_every`` steps), so what a checkpoint holds is logged."""
    check_loggers(names)
    run_dir = Path(run_dir)
    made: list[Callback] = []
    if "csv" in names:
        made.append(CsvLogger(run_dir / CSV_FILE))
    if "tensorboard" in names:
        made.append(TensorBoardLogger(run_dir / TENSORBOARD_DIR, checkpoint_every))
    return made


class ProgressBar(Callback):
    """Progress of a run: epoch, training loss, the latest validation metric, time and ETA.

    In a terminal it is a live rich bar. Anywhere else (a pipe, a log file, a CI job) it
    prints one plain line per epoch instead, so a logged run shows its progress as it goes.

    The validation metric is the one the run selects its best epoch on (accuracy, balanced
    accuracy, or MAE for regression), computed on the *observed* validation targets: under
    label noise those are noisy too, which the label says ("noisy val acc"), so it is lower
    than the clean test accuracy printed at the end.
    """

    def __init__(self, description: str = "training", console: Any = None) -> None:
        self.description = description
        self.console = console
        self._progress: Any = None
        self._task: Any = None
        self._val = ""  # "noisy val acc 0.481", empty before the first epoch ends
        self._loss = ""
        self._plain = False
        self._start_step = 0
        self._start_time = 0.0

    def on_fit_start(self, trainer: Learner) -> None:
        import time

        from rich import get_console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = self.console or get_console()
        self._plain = not self.console.is_terminal
        self._start_step = trainer.progress.global_step
        self._start_time = time.perf_counter()
        if trainer.progress.history:
            self._val = validation_text(trainer, trainer.progress.history[-1])
        if self._plain:
            return
        self._progress = Progress(
            TextColumn("{task.description}", markup=False, style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self.description,
            total=trainer.plan.total_steps,
            completed=trainer.progress.global_step,
            status="",
        )

    def _status(self, trainer: Learner, epoch: int) -> str:
        where = trainer.plan.position(epoch, trainer.progress.global_step)
        parts = [where, self._loss, self._val]
        return "  ".join(p for p in parts if p)

    def on_step_end(self, trainer: Learner, stats: dict[str, float]) -> None:
        self._loss = loss_text(stats, "") or self._loss
        if self._progress is not None:
            status = self._status(trainer, trainer.progress.epoch + 1)
            self._progress.update(self._task, completed=trainer.progress.global_step, status=status)

    def on_epoch_end(self, trainer: Learner, metrics: dict[str, Any]) -> None:
        import time

        self._val = validation_text(trainer, metrics)
        if isinstance(metrics.get("episodes_finished"), int):  # cross-task meta-training
            self._val = f"{metrics['episodes_finished']} tasks done"
            if isinstance(metrics.get("recent_episode_test_accuracy"), float):
                score = metrics["recent_episode_test_accuracy"]
                self._val += f", test acc of the last 10 episodes {score:.3f}"
        self._loss = loss_text(metrics, "train_") or self._loss
        status = self._status(trainer, int(metrics.get("epoch", trainer.progress.epoch)))
        if self._progress is not None:
            self._progress.update(self._task, completed=trainer.progress.global_step, status=status)
            return
        done = trainer.progress.global_step - self._start_step
        elapsed = time.perf_counter() - self._start_time
        left = (
            elapsed / done * (trainer.plan.total_steps - trainer.progress.global_step)
            if done
            else 0.0
        )
        spent = _clock(trainer.progress.elapsed)
        line = f"{self.description}  {status}  elapsed {spent}  ETA {_clock(left)}"
        from rich.text import Text

        self.console.print(Text(line), soft_wrap=True, highlight=False)

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_stop(self, trainer: Learner, reason: str) -> None:
        self._close()

    def on_fit_end(self, trainer: Learner, result: Any) -> None:
        self._close()


def loss_text(row: dict[str, Any], prefix: str) -> str:
    """``train loss 0.412`` or ``meta loss 0.050`` from a step's statistics (``prefix`` "")
    or an epoch's row (``prefix`` ``train_``: the epoch's means); empty when it has none."""
    for key, label in (("loss", "train loss"), ("meta_loss", "meta loss")):
        value = row.get(prefix + key)
        if isinstance(value, int | float):
            return f"{label} {value:.3f}"
    return ""


def validation_text(trainer: Learner, row: dict[str, Any]) -> str:
    """The row's validation metric as the progress shows it, e.g. ``noisy val acc 0.481``;
    empty when the row has none. "noisy" when the validation targets carry injected noise."""
    val = getattr(getattr(trainer, "task", None), "val", None)
    noisy = "noisy " if val is not None and bool(val.noisy_mask.any()) else ""
    select = getattr(getattr(trainer, "objective", None), "select_on", "accuracy")
    for key, label in (
        ("val_balanced_accuracy" if select == "balanced_accuracy" else "val_accuracy", "acc"),
        ("val_accuracy", "acc"),
        ("val_mae", "MAE"),
    ):
        value = row.get(key)
        if isinstance(value, int | float) and value == value:  # present and not NaN
            if key == "val_balanced_accuracy":
                label = "bal. acc"
            return f"{noisy}val {label} {value:.3f}"
    return ""


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0.0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
