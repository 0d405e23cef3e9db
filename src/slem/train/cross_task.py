"""Cross-task meta-training: one methodology learned over a task family (SLeM, eq. 4 and 5).

The paper learns the methodology ``h`` as an average over training tasks,
``h = argmin (1/t) sum_i l_meta(f_i*(h), D_i(q))``, each ``f_i*(h)`` trained under ``h``.
:class:`CrossTaskTrainer` runs ``tasks_per_step`` episodes side by side, each a model trained
on a task drawn from a :class:`~slem.data.TaskFamily` by the method's own trainer (online, as
MW-Net does within one task) with the *shared* methodology. Every meta step: each running
episode whose meta step is due computes its hypergradient at the current ``h`` (phase one),
the hypergradients are averaged, ``h`` takes one step of its optimizer, and each episode takes
its real step with the updated ``h`` (phase two). With one episode this is exactly the
per-task method. A finished episode is evaluated on its task's test split, recorded, and
replaced by the next task.

**On several ranks** (``torchrun``, :mod:`slem.train.distributed`) the ``tasks_per_step``
episode slots are dealt to the ranks (rank ``r`` runs slots ``r, r + R, ...``; every rank
needs one), and rank ``r``'s ``n``-th episode is task ``n * R + r`` of the family, so the
tasks a rank trains are fixed by the seed and the number of ranks ``R`` (one rank: episodes
``0, 1, 2, ...`` as before). The meta step's averaging is the one collective: each rank's
mean hypergradient and its number of episodes travel in one all-reduce, so the shared
methodology takes the same step on every rank, the step a single process would take over
the same episodes (tested to 1e-6 in float64). A stop asked on any rank travels with it,
so every rank stops after the same meta step.

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
from slem.train.distributed import all_gather, broadcast_module, on_main, ranks, weighted_mean
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
            meta step (over all ranks: at least one episode per rank).
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
        finished: one row per finished episode of this rank: its index, task, and test
            summary (:meth:`all_finished`: every rank's).
        last_meta_gradient: the averaged hypergradient of the last meta step, by name.

    Raises:
        SlemError: a task of the family cannot be built, or does not fit the method; fewer
            ``tasks_per_step`` than ranks.
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
        self.ranks = ranks()
        if config.tasks_per_step < self.ranks.size:
            raise SlemError(
                f"tasks_per_step: {config.tasks_per_step} episodes cannot be shared by "
                f"{self.ranks.size} ranks; set it to at least {self.ranks.size}"
            )
        slots = len(range(self.ranks.rank, config.tasks_per_step, self.ranks.size))
        # the first episode's trainer builds h as a per-task run does (same seed); it is the
        # first episode to run unless a checkpoint is loaded. Every rank starts from rank 0's
        # h (episode 0's)
        self._first: Episode | None = self._episode(self.ranks.rank, new_methodology=True)
        methodology, step = self._first.trainer.methodology, self._first.phased.meta_step
        assert methodology is not None and step is not None
        broadcast_module(methodology)
        self.methodology: Methodology = methodology
        self.hyper = dict(step.hyper)
        self.meta_optimizer = make_meta_optimizer(list(self.hyper.values()), step.meta)
        self.plan = Iterations(config.steps)
        self.progress = Progress.start(None)
        self.label = f"meta-training {kind} over a family of {config.tasks.n_distinct} tasks"
        self.episodes: list[Episode | None] = [None] * slots
        self.started = 0
        self.finished: list[dict[str, Any]] = []
        self.last_meta_gradient: dict[str, Tensor] = {}
        self._stop_asked: str | None = None

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
            fresh = self._first if self._first is not None else self._episode(self.next_index)
            self._first = None  # episode 0, built in __init__
            fresh.loop.start()
            self.episodes[slot] = fresh
            self.started += 1
        return [ep for ep in self.episodes if ep is not None]

    @property
    def next_index(self) -> int:
        """The family's task index of this rank's next episode (``n * ranks + rank``)."""
        return self.started * self.ranks.size + self.ranks.rank

    def all_finished(self) -> list[dict[str, Any]]:
        """Every rank's finished episodes, by episode index (a collective on several ranks)."""
        rows = [row for part in all_gather(self.finished) for row in part]
        return sorted(rows, key=lambda row: int(row["episode"]))

    def _close(self, episode: Episode) -> None:
        summary = episode.loop.end().summary
        keep = ("test_accuracy", "test_accuracy_at_best_val", "best_val_score")
        self.finished.append(
            {
                "episode": episode.index,
                "task": describe(episode.data),
                **({"setup": episode.setup} if episode.setup is not None else {}),
                **({"rank": self.ranks.rank} if self.ranks.active else {}),
                **{k: summary[k] for k in keep if k in summary},
            }
        )

    # ------------------------------------------------------------------ the Loop's learner

    def step(self, batch: Any) -> dict[str, float]:
        """One meta step: a training step of every running episode, the due hypergradients
        averaged (over every rank) into one update of the shared methodology between their
        two phases."""
        pending: list[tuple[Episode, Any, PendingStep]] = []
        for ep in self._running():
            x, y, idx = ep.loop.next_batch()
            if not ep.phased.meta_step_due:  # warm-up or between meta steps
                ep.loop.after_step(ep.trainer.step((x, y, idx)))
                continue
            ep.trainer.schedule_lr()
            with same_randomness() as snapshot:
                pending.append((ep, snapshot, ep.phased.meta_hypergradient(x, y, idx)))
        grads, tasks, meta_loss = self._average(pending)
        if tasks == 0:
            return {}
        step_hyper(self.meta_optimizer, self.hyper, grads)
        self.last_meta_gradient = grads
        for ep, snapshot, p in pending:
            with same_randomness(snapshot):
                stats = ep.phased.real_step(p)
            ep.loop.after_step(stats)
        return {"meta_loss": meta_loss, "tasks": tasks}

    def _average(
        self, pending: list[tuple[Episode, Any, PendingStep]]
    ) -> tuple[dict[str, Tensor], float, float]:
        """The mean hypergradient and meta loss of the due episodes of every rank, and their
        number: one all-reduce on several ranks, which also carries a stop asked on any."""
        results = [p.result for _, _, p in pending]
        if not self.ranks.active:
            if not results:
                return {}, 0.0, 0.0
            loss = sum(r.outer_loss for r in results) / len(results)
            return average(results), float(len(results)), loss
        # sums, counts and the stop flag in one bucket, averaged over the ranks
        sums = {
            k: sum((r.grads[k] for r in results), torch.zeros_like(v))
            for k, v in self.hyper.items()
        }
        scalars = [float(len(results)), sum(r.outer_loss for r in results)]
        scalars.append(float(self._stop_asked is not None))
        bucket = {**sums, "_scalars": torch.tensor(scalars, dtype=torch.float64)}
        mean, _ = weighted_mean(bucket, 1.0)
        tasks, loss_sum, stop = (float(v) * self.ranks.size for v in mean["_scalars"])
        tasks, stop = float(round(tasks)), float(round(stop))
        if stop > 0:
            self.progress.stop = self._stop_asked or "stopped on another rank"
        if tasks == 0:
            return {}, 0.0, 0.0
        share = self.ranks.size / tasks  # the mean over ranks of sums, times ranks / tasks
        grads = {k: mean[k] * share for k in sums}
        return grads, tasks, loss_sum / tasks

    def epoch_steps(self) -> range:
        return self.plan.epoch(self.progress.epoch)

    def on_epoch_start(self) -> None:  # every task is drawn in step
        pass

    def end_epoch(self) -> dict[str, Any]:
        finished = self.all_finished() if self.ranks.active else self.finished
        row = {
            "epoch": self.progress.epoch + 1,
            "step": self.progress.global_step,
            "episodes_started": self.episodes_started(),
            "episodes_finished": len(finished),
        }
        recent = [r["test_accuracy"] for r in finished[-10:] if "test_accuracy" in r]
        if recent:  # each finished episode's test split is held out from its training
            row["recent_episode_test_accuracy"] = sum(recent) / len(recent)
        return self.progress.close_epoch(row, math.nan, self.methodology)

    def episodes_started(self) -> int:
        """Episodes started on every rank (a collective on several ranks)."""
        return sum(all_gather(self.started)) if self.ranks.active else self.started

    def finish(self) -> Methodology:
        """The meta-trained methodology; episodes still running are left unfinished."""
        return self.methodology

    def request_stop(self, reason: str) -> None:
        """Stop after the current meta step (signal handlers call this); on several ranks
        after the next meta step, on every rank."""
        if self.ranks.active:
            self._stop_asked = reason
        else:
            self.progress.stop = reason

    def fit(self, progress: bool = True) -> Methodology:
        """Meta-train for ``config.steps`` meta steps (from a loaded checkpoint).

        Raises:
            TrainingStopped: a stop was requested (Ctrl-C, :meth:`request_stop`).
            NonFiniteLoss: a loss or hypergradient became NaN or infinite.
        """
        result: Methodology = Loop(self, progress and self.ranks.main).run()
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
    written whole or not at all (by rank 0 alone on several ranks; every rank calls this).
    Returns the summary.

    Raises:
        TrainingStopped: a stop was requested (the checkpoint is written first).
        SlemError: a task cannot be built, or the checkpoint is damaged.
    """
    checkpoint = run_dir / "meta_checkpoint.pt"
    learner = CrossTaskTrainer(config, [CheckpointCallback(checkpoint, config.checkpoint_every)])
    if resume and on_main(checkpoint.is_file):
        learner.load_checkpoint(checkpoint)
    if on_trainer is not None:
        on_trainer(learner)
    h = learner.fit(progress)
    finished, started = learner.all_finished(), learner.episodes_started()
    accuracies = [r["test_accuracy"] for r in finished if "test_accuracy" in r]
    summary = {
        "methodology": str(run_dir / "methodology"),
        "meta_steps": learner.progress.global_step,
        "episodes_started": started,
        "episodes_finished": len(finished),
        "episode_test_accuracy_mean": sum(accuracies) / len(accuracies) if accuracies else None,
        "seconds": round(learner.progress.elapsed, 1),
        **({"ranks": learner.ranks.size} if learner.ranks.active else {}),
    }
    if not learner.ranks.main:  # rank 0 writes the run's files
        return summary
    save_methodology(
        h,
        run_dir / "methodology",
        config.train,
        trained_on={
            "family": config.tasks.model_dump(mode="json"),
            "setups": config.setups,
            "episodes_started": started,
            "episodes_finished": len(finished),
            "meta_steps": learner.progress.global_step,
            "tasks_per_step": config.tasks_per_step,
            **({"ranks": learner.ranks.size} if learner.ranks.active else {}),
        },
    )
    lines = "".join(json.dumps(row) + "\n" for row in finished)
    atomic_write_text(run_dir / "episodes.jsonl", lines)
    rows = "".join(json.dumps(row) + "\n" for row in learner.progress.history)
    atomic_write_text(run_dir / "meta_metrics.jsonl", rows)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
