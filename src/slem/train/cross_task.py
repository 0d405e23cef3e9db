"""Cross-task meta-training: one methodology learned over a task family (SLeM, eq. 4 and 5).

The paper learns the methodology ``h`` as an average over training tasks,
``h = argmin (1/t) sum_i l_meta(f_i*(h), D_i(q))``, each ``f_i*(h)`` trained under ``h``.
:class:`CrossTaskTrainer` runs ``tasks_per_step`` episodes side by side, each a model trained
on a task drawn from a :class:`~slem.data.TaskFamily` by the method's own trainer (online, as
MW-Net does within one task) with the *shared* methodology. Every meta step: each running
episode whose meta step is due computes its hypergradient at the current ``h`` (phase one),
the hypergradients are averaged, ``h`` takes one step of its optimizer, and each episode takes
its real step with the updated ``h`` (phase two). With one episode this is exactly the
per-task method; the averaging is the one place a distributed run would all-reduce. A finished
episode is evaluated on its task's test split, recorded, and replaced by the next task.

Any method whose registry entry says ``cross_task`` runs here: its trainer takes its meta step
in two phases (:class:`~slem.train.meta_step.PhasedMetaStep`: sample weighting, the learned
learning-rate schedule, the loss adjuster). The shared methodology and the settings of its
optimizer are those of the first episode's trainer (seeded as a per-task run seeds them).
A learned schedule's snapshots (its ``stages``) are taken from the live net as each episode
passes its stage boundaries, as in a per-task run: the artifact holds the last ones taken.

The learner runs in the one :class:`~slem.train.loop.Loop` (checkpoints, progress, clean
stops); each episode's trainer is driven by a Loop of its own, step by step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from slem.bilevel import Hypergrad, same_randomness
from slem.data import DataConfig, TaskFamily, build_task
from slem.errors import SlemError, validation_message
from slem.methodology import Methodology
from slem.rundir import atomic_write_text
from slem.train.artifacts import save_methodology
from slem.train.callbacks import Callback, CheckpointCallback
from slem.train.checkpoint_io import load_checkpoint_into, save_atomic
from slem.train.config import TrainConfig
from slem.train.loop import Iterations, Loop
from slem.train.meta_step import PendingStep, PhasedMetaStep, make_meta_optimizer, step_hyper
from slem.train.methods import build_trainer, check_fits, get_method, method_names, method_spec
from slem.train.progress import Progress
from slem.train.threads import resolve_device
from slem.train.trainer import Trainer


def _cross_task_methods() -> list[str]:
    """Methods that can be meta-trained across tasks (the registry's ``cross_task``)."""
    return [name for name in method_names() if get_method(name).cross_task]


class CrossTaskConfig(BaseModel):
    """``slem meta-train``: one methodology meta-trained over a family of tasks.

    Attributes:
        tasks: the task family (:class:`~slem.data.TaskFamily`).
        train: how each episode trains (method, model, optim, meta; no ``data``: the family
            gives the tasks). Episode ``e`` trains with seed ``train.seed + e``.
        setups: training setups drawn per episode (the family's architectures x training
            lengths): each a mapping of ``model`` / ``optim`` keys over ``train``'s, e.g.
            ``{model: {width: 256}, optim: {epochs: 40, schedule: constant}}``; empty: every
            episode trains as ``train`` says.
        tasks_per_step: episodes run side by side; their hypergradients are averaged in every
            meta step.
        steps: meta steps (one training step of every running episode each).
        checkpoint_every: meta steps between checkpoints.
    """

    model_config = ConfigDict(extra="forbid")

    tasks: TaskFamily
    train: TrainConfig
    setups: list[dict[str, Any]] = Field(
        default_factory=list, description="model/optim overrides, one drawn per episode"
    )
    tasks_per_step: int = Field(4, ge=1, description="episodes whose hypergradients are averaged")
    steps: int = Field(2000, ge=1, description="meta steps")
    checkpoint_every: int = Field(100, ge=1, description="meta steps between checkpoints")

    @model_validator(mode="before")
    @classmethod
    def _no_data_section(cls, values: Any) -> Any:
        train = values.get("train") if isinstance(values, dict) else None
        if isinstance(train, dict) and train.get("data") is not None:
            raise SlemError("train.data: remove it; the task family (tasks) gives the tasks")
        return values

    @model_validator(mode="after")
    def _a_method_that_learns_across_tasks(self) -> CrossTaskConfig:
        methods = _cross_task_methods()
        if self.train.method not in methods:
            raise SlemError(
                f"train.method: {self.train.method} cannot be meta-trained across tasks; use "
                f"one of {', '.join(methods)}"
            )
        for k, setup in enumerate(self.setups):
            extra = sorted(set(setup) - {"model", "optim"})
            if extra:
                raise SlemError(
                    f"setups[{k}]: {', '.join(extra)} cannot vary per episode; a setup "
                    "overrides model and optim keys only"
                )
            with_setup(self.train, setup, f"setups[{k}]")
        why = method_spec(self.train).needs_meta_set(self.train)
        if why is not None and self.tasks.meta_per_class is None:
            raise SlemError(
                f"tasks.meta_per_class: train.{why}; set it (e.g. 10), or use "
                "train.meta.objective dac (DAC-MR needs no meta set)"
            )
        return self


def with_setup(train: TrainConfig, setup: dict[str, Any], where: str = "setup") -> TrainConfig:
    """``train`` with the sections of ``setup`` merged over its own (a one-line
    :class:`SlemError` naming ``where`` when the result is not a valid config)."""
    if not setup:
        return train
    values = train.model_dump(mode="json")
    for section, keys in setup.items():
        if not isinstance(keys, dict):
            raise SlemError(f"{where}.{section}: give a mapping, e.g. {{width: 256}}")
        values[section] = {**values[section], **keys}
    try:
        return TrainConfig.model_validate(values)
    except (ValidationError, SlemError) as exc:
        raise SlemError(f"{where}: {validation_message(exc)}") from None


def parse_cross_task_config(values: Any) -> CrossTaskConfig:
    """Validate a mapping into a :class:`CrossTaskConfig` (one-line :class:`SlemError`)."""
    try:
        return CrossTaskConfig.model_validate(values)
    except ValidationError as exc:
        raise SlemError(validation_message(exc)) from None


@dataclass
class Episode:
    """One task of the family being trained under the shared methodology."""

    index: int
    data: DataConfig
    setup: int | None
    trainer: Trainer
    loop: Loop

    @property
    def phased(self) -> PhasedMetaStep:
        """The trainer's two-phase meta step."""
        assert isinstance(self.trainer, PhasedMetaStep)
        return self.trainer


def average(results: Sequence[Hypergrad]) -> dict[str, Tensor]:
    """The mean of the results' gradients per hyperparameter (SLeM eq. 4's ``1/t sum_i``)."""
    return {
        name: torch.stack([r.grads[name] for r in results]).mean(0) for name in results[0].grads
    }


class CrossTaskTrainer:
    """Meta-trains one methodology over ``config.tasks``; a :class:`~slem.train.loop.Learner`.

    Attributes:
        methodology: the shared ``h`` (returned by :meth:`fit`).
        hyper: its parameters the meta steps learn, by name (a learned schedule: the live
            net's, not its snapshots').
        episodes: the running episodes (None before the first step).
        finished: one row per finished episode: its index, task, and test summary.

    Raises:
        SlemError: a task of the family cannot be built, or does not fit the method.
    """

    def __init__(
        self,
        config: CrossTaskConfig,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        self.config, self.callbacks = config, list(callbacks)
        train = config.train
        self.device = torch.device(device) if device is not None else resolve_device(train.device)
        (kind,) = method_spec(train).meta_learns
        # the first episode's trainer builds h as a per-task run does (same seed); it is the
        # first episode to run unless a checkpoint is loaded
        self._first: Episode | None = self._episode(0, new_methodology=True)
        methodology, step = self._first.trainer.methodology, self._first.phased.meta_step
        assert methodology is not None and step is not None
        self.methodology: Methodology = methodology
        self.hyper = dict(step.hyper)
        self.meta_optimizer = make_meta_optimizer(list(self.hyper.values()), step.meta)
        self.plan = Iterations(config.steps)
        self.progress = Progress.start(None)
        self.label = f"meta-training {kind} over a family of {config.tasks.n_distinct} tasks"
        self.episodes: list[Episode | None] = [None] * config.tasks_per_step
        self.started = 0
        self.finished: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ episodes

    def setup(self, index: int) -> int | None:
        """Episode ``index``'s training setup (an index into ``config.setups``; None without
        setups), drawn from the family's seed and the episode alone."""
        setups = self.config.setups
        if not setups:
            return None
        rng = np.random.default_rng([self.config.tasks.seed, index, 1])
        return int(rng.integers(len(setups)))

    def _episode(
        self, index: int, state: dict[str, Any] | None = None, new_methodology: bool = False
    ) -> Episode:
        """Episode ``index`` on the shared methodology (``new_methodology``: its trainer builds
        one, as a per-task run does), in its training setup, from a saved trainer ``state``."""
        data = self.config.tasks.task(index)
        seed = self.config.train.seed + index
        setup = self.setup(index)
        train = self.config.train
        if setup is not None:
            train = with_setup(train, self.config.setups[setup])
        config = train.model_copy(update={"data": data, "seed": seed})
        shared = None if new_methodology else self.methodology
        trainer = build_trainer(config, build_task(data), None, shared, ())
        if not isinstance(trainer, PhasedMetaStep):  # the registry's cross_task is wrong
            raise TypeError(f"{type(trainer).__name__} has no two-phase meta step")
        if state is not None:
            trainer.load_state(state)
        return Episode(index, data, setup, trainer, Loop(trainer, progress=False))

    def _running(self) -> list[Episode]:
        """The episodes of this meta step: a finished one is closed and the next task of the
        family takes its place."""
        for slot, episode in enumerate(self.episodes):
            if episode is not None and not episode.loop.done:
                continue
            if episode is not None:
                self._close(episode)
            fresh = self._first if self._first is not None else self._episode(self.started)
            self._first = None  # episode 0, built in __init__
            fresh.loop.start()
            self.episodes[slot] = fresh
            self.started += 1
        return [ep for ep in self.episodes if ep is not None]

    def _close(self, episode: Episode) -> None:
        summary = episode.loop.end().summary
        keep = ("test_accuracy", "test_accuracy_at_best_val", "best_val_score")
        self.finished.append(
            {
                "episode": episode.index,
                "task": describe(episode.data),
                **({"setup": episode.setup} if episode.setup is not None else {}),
                **{k: summary[k] for k in keep if k in summary},
            }
        )

    # ------------------------------------------------------------------ the Loop's learner

    def step(self, batch: Any) -> dict[str, float]:
        """One meta step: a training step of every running episode, the due hypergradients
        averaged into one update of the shared methodology between their two phases."""
        pending: list[tuple[Episode, Any, PendingStep]] = []
        for ep in self._running():
            x, y, idx = ep.loop.next_batch()
            if not ep.phased.meta_step_due:  # warm-up or between meta steps
                ep.loop.after_step(ep.trainer.step((x, y, idx)))
                continue
            ep.trainer.schedule_lr()
            with same_randomness() as snapshot:
                pending.append((ep, snapshot, ep.phased.meta_hypergradient(x, y, idx)))
        if not pending:
            return {}
        step_hyper(self.meta_optimizer, self.hyper, average([p.result for _, _, p in pending]))
        losses = []
        for ep, snapshot, p in pending:
            with same_randomness(snapshot):
                stats = ep.phased.real_step(p)
            ep.loop.after_step(stats)
            losses.append(stats["meta_loss"])
        return {"meta_loss": sum(losses) / len(losses), "tasks": float(len(losses))}

    def epoch_steps(self) -> range:
        return self.plan.epoch(self.progress.epoch)

    def on_epoch_start(self) -> None:  # every task is drawn in step
        pass

    def end_epoch(self) -> dict[str, Any]:
        row = {
            "epoch": self.progress.epoch + 1,
            "step": self.progress.global_step,
            "episodes_started": self.started,
            "episodes_finished": len(self.finished),
        }
        recent = [r["test_accuracy"] for r in self.finished[-10:] if "test_accuracy" in r]
        if recent:  # each finished episode's test split is held out from its training
            row["recent_episode_test_accuracy"] = sum(recent) / len(recent)
        return self.progress.close_epoch(row, math.nan, self.methodology)

    def finish(self) -> Methodology:
        """The meta-trained methodology; episodes still running are left unfinished."""
        return self.methodology

    def request_stop(self, reason: str) -> None:
        """Stop after the current meta step (signal handlers call this)."""
        self.progress.stop = reason

    def fit(self, progress: bool = True) -> Methodology:
        """Meta-train for ``config.steps`` meta steps (from a loaded checkpoint).

        Raises:
            TrainingStopped: a stop was requested (Ctrl-C, :meth:`request_stop`).
            NonFiniteLoss: a loss or hypergradient became NaN or infinite.
        """
        result: Methodology = Loop(self, progress).run()
        return result

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """The methodology, its optimizer, the progress, every running episode's trainer
        state, and torch's random state (last, as it stands now)."""
        return {
            "methodology": self.methodology.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            **self.progress.state_dict(),
            "started": self.started,
            "finished": self.finished,
            "episodes": [
                None if ep is None else {"index": ep.index, "state": ep.trainer.state()}
                for ep in self.episodes
            ],
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.methodology.load_state_dict(state["methodology"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.progress.load_state_dict(state)
        self.started, self.finished = state["started"], state["finished"]
        self._first, self.episodes = None, []
        for saved in state["episodes"]:
            episode = None if saved is None else self._episode(saved["index"], saved["state"])
            if episode is not None:
                episode.loop.start()
            self.episodes.append(episode)
        torch.set_rng_state(state["torch_rng"].cpu())  # after the episodes restored theirs

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomic: a kill during the write leaves the previous checkpoint intact."""
        return save_atomic(self.state(), path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from ``path``.

        Raises:
            SlemError: the file is missing, damaged, or not a cross-task checkpoint.
        """
        keys = ("methodology", "meta_optimizer", "episodes")
        load_checkpoint_into(Path(path), self.load_state, self.device, keys)


def check_family(config: CrossTaskConfig) -> None:
    """Build every combination of the family's choices once and check the method fits it, so
    a family with a task that cannot be built fails now, not hours into a run.

    Raises:
        SlemError: one line naming the combination and what is wrong with it.
    """
    trains = [with_setup(config.train, setup) for setup in config.setups] or [config.train]
    for data in config.tasks.distinct_tasks():
        try:
            task = build_task(data)
            for train in trains:
                check_fits(train.model_copy(update={"data": data}), task)
        except SlemError as exc:
            raise SlemError(
                f"tasks: the task '{describe(data)}' cannot be trained: {exc}; change or "
                "remove that choice of the family"
            ) from None


def describe(data: DataConfig) -> str:
    """A task of a family in one line, e.g. ``wine symmetric:0.4 imbalance 10 (seed 7)``."""
    parts = [data.name, str(data.noise) if data.noise is not None else "clean"]
    if data.imbalance is not None:
        parts.append(f"imbalance {data.imbalance:g}")
    if data.size is not None:
        parts.append(f"size {data.size}")
    return " ".join(parts) + f" (seed {data.seed})"


__all__ = [
    "CrossTaskConfig",
    "CrossTaskTrainer",
    "Episode",
    "average",
    "check_family",
    "cross_task_run",
    "describe",
    "parse_cross_task_config",
]


def cross_task_run(
    config: CrossTaskConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_trainer: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """``slem meta-train``: meta-train into ``run_dir`` (resumable from its
    ``meta_checkpoint.pt``), then write the methodology artifact (``methodology/``, applied
    with ``slem apply``), ``episodes.jsonl`` (one row per finished episode),
    ``meta_metrics.jsonl`` (one row per tenth of the meta steps) and ``summary.json``, each
    written whole or not at all. Returns the summary.

    Raises:
        TrainingStopped: a stop was requested (the checkpoint is written first).
        SlemError: a task cannot be built, or the checkpoint is damaged.
    """
    checkpoint = run_dir / "meta_checkpoint.pt"
    learner = CrossTaskTrainer(config, [CheckpointCallback(checkpoint, config.checkpoint_every)])
    if resume and checkpoint.is_file():
        learner.load_checkpoint(checkpoint)
    if on_trainer is not None:
        on_trainer(learner)
    h = learner.fit(progress)
    save_methodology(
        h,
        run_dir / "methodology",
        config.train,
        trained_on={
            "family": config.tasks.model_dump(mode="json"),
            "setups": config.setups,
            "episodes_started": learner.started,
            "episodes_finished": len(learner.finished),
            "meta_steps": learner.progress.global_step,
            "tasks_per_step": config.tasks_per_step,
        },
    )
    lines = "".join(json.dumps(row) + "\n" for row in learner.finished)
    atomic_write_text(run_dir / "episodes.jsonl", lines)
    rows = "".join(json.dumps(row) + "\n" for row in learner.progress.history)
    atomic_write_text(run_dir / "meta_metrics.jsonl", rows)
    accuracies = [r["test_accuracy"] for r in learner.finished if "test_accuracy" in r]
    summary = {
        "methodology": str(run_dir / "methodology"),
        "meta_steps": learner.progress.global_step,
        "episodes_started": learner.started,
        "episodes_finished": len(learner.finished),
        "episode_test_accuracy_mean": sum(accuracies) / len(accuracies) if accuracies else None,
        "seconds": round(learner.progress.elapsed, 1),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
