""":class:`Trainer`: a model trained on a :class:`~slem.data.Task` by a registered method
(:mod:`slem.train.methods`): ERM, a robust-loss baseline, fine-tuning on the meta set, or a
*frozen* methodology (meta-test: no meta set, about the cost of plain training). Meta-learning
trainers build on it (:mod:`slem.train.meta_trainer`, ``bundle``, ``schedule``,
``regression``). Deterministic given the seed; resumes exactly from a checkpoint (each
epoch's sample order comes from ``(seed, epoch)`` and every random state is saved).

**Data-parallel on one task** (:meth:`Trainer.use_ranks`, under ``torchrun``): every rank
draws the same global batches and takes its contiguous part of each
(:class:`~slem.train.plan.Batches`); the real step's gradient is averaged over the ranks,
weighted by their rows, before the optimizer steps (no DDP wrapper: the meta step needs
``torch.autograd.grad``), so every rank takes the global batch's step. Sample weights are
those of the global batch, and a meta step takes the fast path with a ``reduce``
(:class:`~slem.bilevel.WeightedProblem`): in float64 a run on ``R`` ranks equals the run on
one process to round-off. Two things are per rank, as under DDP: BatchNorm normalizes with
each rank's own batch statistics (its running statistics are averaged over the ranks at
every epoch's end, before evaluation), and dropout draws its own masks on each rank.
Evaluation runs on every rank (the same numbers, so early stopping and the best epoch agree);
rank 0 writes the files (:func:`~slem.train.run.train_run`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slem.bilevel import Hypergrad, replay_randomness, same_randomness
from slem.bilevel.problem import as_params
from slem.data.augment import dac_views
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import Methodology
from slem.methodology.weighting import CMWNet, MWNet
from slem.train.callbacks import Callback
from slem.train.checkpoint_io import (
    load_checkpoint_into,
    restore_rng,
    rng_state,
    save_atomic,
)
from slem.train.config import TrainConfig
from slem.train.diagnostics import weight_metrics
from slem.train.distributed import (
    Ranks,
    broadcast_module,
    mean_buffers,
    mean_gradients_with,
)
from slem.train.guard import Stoppable as Stoppable
from slem.train.guard import (
    blowup_context,
    check_finite,
    check_hypergradients,
    check_parameters,
)
from slem.train.hooks import SampleWeights
from slem.train.loop import Loop
from slem.train.meta_step import hypergradient_norm
from slem.train.methods import data_parallel_refusal, method_spec
from slem.train.methods import make_trainer as make_trainer
from slem.train.models import build_model
from slem.train.objective import Classification, objective_for
from slem.train.optimizers import make_optimizer
from slem.train.plan import Batches, Plan
from slem.train.progress import Progress
from slem.train.record import RunRecord, run_summary, trainer_record
from slem.train.record import TrainResult as TrainResult
from slem.train.threads import resolve_device as resolve_device


class Trainer:
    """ERM, robust-loss baselines, fine-tuning, or a frozen methodology on one task."""

    #: the checkpoint last written or loaded (None: training has no checkpoint yet)
    last_checkpoint: Path | None = None
    # where training stands, for reading (the counters live in ``progress``)
    epoch = property(lambda self: self.progress.epoch, doc="Epochs finished.")
    global_step = property(lambda self: self.progress.global_step, doc="Steps taken.")
    history = property(lambda self: self.progress.history, doc="One row per finished epoch.")
    label = property(lambda self: f"{self.config.method} {self.task.name}", doc="Its name.")
    #: why this trainer cannot train data-parallel (None: it can; see :meth:`use_ranks`)
    serial_only: str | None = None

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        model: nn.Module | None = None,
        methodology: Methodology | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        self.spec = method_spec(config)
        self.spec.check_target(task)
        self.config = config
        self.task = task
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        self.objective = objective_for(task, config, self.device)
        torch.manual_seed(config.seed)
        shape, n_out = task.features.input_shape, self.objective.n_outputs
        self.model = model or build_model(shape, n_out, **config.model.model_dump())
        if not any(p.requires_grad for p in self.model.parameters()):
            raise SlemError(
                f"the model ({type(self.model).__name__}) has no trainable parameters; give it "
                "layers with weights"
            )
        self.model.to(self.device)
        self.methodology = methodology.to(self.device) if methodology is not None else None
        self.callbacks = list(callbacks)
        self.train_x, self.train_y = self.objective.tensors(task.train)
        self.val_x, self.val_y = self.objective.tensors(task.val)
        self.test_x, self.test_y = self.objective.tensors(task.test)
        self.meta_x: Tensor | None = None
        self.meta_y: Tensor | None = None
        if task.meta is not None:
            self.meta_x, self.meta_y = self.objective.tensors(task.meta)
        n_meta = len(self.meta_y) if self.meta_y is not None else 0
        self.plan = Plan(config, self.spec, len(self.train_y), n_meta)
        self.optimizer = make_optimizer(self.model.parameters(), config, self.methodology)
        net, o = self.methodology, self.objective
        self.progress = Progress.start(self.objective.initial_best)
        self.sample_weights = (
            self.new_sample_weights(net)
            if isinstance(net, MWNet | CMWNet) and isinstance(o, Classification)
            else None
        )
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.objective.check_output(self.model, self.train_x)
        #: the ranks it trains over, data-parallel (:meth:`use_ranks`); one by default
        self.ranks = Ranks()
        self._rows = 0  # the current step's rows on this rank (the gradient's weight)

    def use_ranks(self, ranks: Ranks) -> None:
        """Train data-parallel over ``ranks`` (every rank of a ``torchrun`` run calls this,
        with :func:`~slem.train.distributed.ranks`, before training or loading a checkpoint):
        see the module docstring. Every rank starts from rank 0's model and methodology. A
        no-op with one rank.

        Raises:
            SlemError: the method (or this trainer) cannot train data-parallel, or a batch
                has fewer rows than there are ranks.
        """
        if not ranks.active:
            return
        reason = data_parallel_refusal(self.config) or self.serial_only
        if reason is not None:
            raise SlemError(reason)
        plan = self.plan
        if plan.batch_size < ranks.size:
            raise SlemError(
                f"optim.batch_size {plan.batch_size} is smaller than the {ranks.size} ranks: "
                "each rank needs rows of every batch; raise it or use fewer ranks"
            )
        if plan.finetune_epochs and plan.finetune_batch < ranks.size:
            raise SlemError(
                f"the fine-tuning batches have {plan.finetune_batch} rows, fewer than the "
                f"{ranks.size} ranks; give the task a larger meta set or use fewer ranks"
            )
        self.ranks = ranks
        for module in self._replicated():
            broadcast_module(module)
        if self.sample_weights is not None:
            self.sample_weights.shard_over(ranks, plan.batch_size)

    def _replicated(self) -> list[nn.Module]:
        """The modules every rank holds the same copy of: the model, the methodology, the
        label-correction teacher."""
        sw = self.sample_weights
        teacher = sw.teacher.net if sw is not None and sw.teacher is not None else None
        return [m for m in (self.model, self.methodology, teacher) if m is not None]

    @property
    def labels(self) -> Classification:
        """The classification objective of a run on class labels."""
        assert isinstance(self.objective, Classification), "a classification run"
        return self.objective

    def new_sample_weights(self, net: MWNet | CMWNet) -> SampleWeights:
        """How ``net`` weighs this run's samples (its observer follows the run's clock)."""
        total = max(self.plan.total_steps, 1)
        clock = lambda: self.progress.global_step / total  # noqa: E731
        return SampleWeights(
            net, self.labels, self.model, self.config.meta, len(self.train_y), clock
        )

    @property
    def weighting(self) -> MWNet | CMWNet | None:
        """The sample-weighting net, if the run has one."""
        return self.sample_weights.net if self.sample_weights is not None else None

    def lr_at(self, step: int) -> float:
        """The learning rate at global ``step`` (the plan's; learned schedules override)."""
        return self.plan.lr(self.progress.epoch, step)

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (signal handlers call this)."""
        self.progress.stop = reason

    def fit(self, progress: bool = True) -> TrainResult:
        """Train to the end of the plan (from a loaded checkpoint) and evaluate, in a
        :class:`~slem.train.loop.Loop`; ``progress``: a bar on stderr unless one is a callback.

        Raises:
            TrainingStopped: a stop was requested (Ctrl-C, :meth:`request_stop`).
            NonFiniteLoss: a loss, hypergradient or parameter became NaN or infinite.
        """
        return Loop(self, progress).run()

    def epoch_steps(self) -> Batches:
        """The current epoch's minibatches (:meth:`Plan.epoch_batches`)."""
        mx, my = self.meta_x, self.meta_y
        meta = (mx, my) if mx is not None and my is not None else None
        train = (self.train_x, self.train_y)
        epoch, seed = self.progress.epoch, self.config.seed
        return self.plan.epoch_batches(epoch, seed, train, meta, self.ranks)

    def step(self, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, float]:
        """One training step on ``(inputs, targets, indices)`` at the scheduled rate, with one
        draw of the model's randomness (:func:`~slem.bilevel.same_randomness`)."""
        self._rows = len(batch[0])
        self.schedule_lr()
        with same_randomness():
            return self.train_step(*batch)

    def schedule_lr(self) -> None:
        """Set the optimizer's rate for the next step (:meth:`lr_at` the global step)."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(self.progress.global_step)

    def on_epoch_start(self) -> None:
        """Per-epoch preparation: the sample weights' task estimates (and MetaTrainer's
        self-selected meta set)."""
        if self.sample_weights is not None:
            self.sample_weights.start_epoch()

    def has_sample_weights(self) -> bool:
        return self.weighting is not None

    def end_epoch(self) -> dict[str, Any]:
        """The epoch's row (validation metrics, learned weights' quality, label correction's
        pseudo-labels) into the history; the best epoch by the objective's selection score."""
        p = self.progress
        if self.ranks.active:  # every rank evaluates (and keeps as best) the same model
            for module in self._replicated():
                mean_buffers(module)
        check_hypergradients(p.epoch_stats.get("hypergrad_norm"), p.epoch, self.config)
        row: dict[str, Any] = {
            "epoch": p.epoch + 1,
            "step": p.global_step,
            "lr": self.lr_at(p.global_step - 1),
            "seconds": round(p.elapsed, 2),
            **self.objective.validation_metrics(self.model, self.val_x, self.val_y),
        }
        if self.has_sample_weights() and self.task.corruption_known:
            row.update(weight_metrics(self.train_weights(), self.task.train.noisy_mask))
        if self.sample_weights is not None and self.sample_weights.teacher is not None:
            row.update(self.sample_weights.teacher.metrics(self.train_x, self.task.train))
        return p.close_epoch(row, self.objective.selection_score(row), self.model)

    def per_sample_losses(self, logits: Tensor, y: Tensor) -> Tensor:
        """The method's per-sample loss of the output (the plain loss while fine-tuning)."""
        if self.progress.epoch >= self.config.optim.epochs:
            return self.objective.plain_loss(logits, y)
        return self.objective.training_losses(self.spec.loss, logits, y, self)

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        self.model.train()
        logits = self.model(x)
        sw = self.sample_weights
        if sw is not None and self.progress.epoch < self.config.optim.epochs:
            loss = sw.loss(sw.terms(logits, y, sw.pseudo_labels(x)), y, idx)
        else:
            loss = self.per_sample_losses(logits, y).mean()
        return self._optimize(loss, start)

    def _optimize(self, loss: Tensor, start: float) -> dict[str, float]:
        """The real step on ``loss``, timed as a plain step."""
        value = self._apply_step(loss)
        self.progress.timings["plain"].append(time.perf_counter() - start)
        return {"loss": value}

    def _apply_step(self, loss: Tensor) -> float:
        """Backward and optimizer step on ``loss``, with finiteness checks before and after;
        returns the loss. Data-parallel: the gradient and the loss are the global batch's
        (averaged over the ranks, weighted by their rows) before the checks and the step."""
        if self.ranks.active:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mean = mean_gradients_with(self.model, float(self._rows), {"loss": loss})
            loss = mean["loss"]
            self._check_finite(loss, "training loss")
        else:
            self._check_finite(loss, "training loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        self._check_parameters()
        if self.sample_weights is not None:
            self.sample_weights.after_step(self.model, self.progress.global_step)
        return float(loss.detach())

    def forward(self, x: Tensor) -> Tensor:
        """The real step's forward pass, with the random state the step's meta step used
        (dropout draws the same masks as in the virtual step; see
        :func:`~slem.bilevel.same_randomness`)."""
        replay_randomness()
        out: Tensor = self.model(x)
        return out

    def inner_params(self) -> dict[str, Tensor]:
        """The inner parameters of every meta step: the model's *trainable* parameters, as
        :meth:`~slem.bilevel.BilevelProblem.from_module` takes them. Frozen ones
        (``requires_grad=False``) are neither moved by virtual steps nor differentiated,
        exactly as the real optimizer leaves them."""
        return as_params(self.model, "params")

    def observe_hypergradient(self, result: Hypergrad) -> None:
        """Record a meta step's hypergradient: its norm is the epoch's
        ``train_hypergrad_norm`` (an epoch whose every hypergradient is exactly zero stops the
        run), and every callback's ``on_hypergradient`` sees it."""
        self.progress.record({"hypergrad_norm": hypergradient_norm(result)})
        for cb in self.callbacks:
            cb.on_hypergradient(self, result)

    def dac_views(self, n: int) -> dict[str, Tensor]:
        """DAC-MR's unlabeled batch: ``n`` training inputs, weakly and strongly augmented."""
        return dac_views(self.train_x, n, self.generator)

    def _check_parameters(self) -> None:
        """A finite loss can still step the parameters to infinity: caught before any save."""
        check_parameters(self.model, self._context)

    def _check_finite(self, value: Tensor, what: str) -> None:
        check_finite(value, what, self._context)

    def _context(self) -> str:
        p = self.progress
        return blowup_context(p.epoch, p.step_in_epoch, self.last_checkpoint)

    def train_weights(self) -> np.ndarray:
        """The weighting net's (unnormalized) weight of every training sample, in eval mode."""
        assert self.sample_weights is not None
        return self.sample_weights.train_weights(self.model, self.train_x, self.train_y)

    def finish(self) -> TrainResult:
        """Evaluate on the test split (at the end and at the best validation epoch) and
        summarize the run (:func:`~slem.train.record.run_summary`)."""
        final = self.progress.history[-1] if self.progress.history else {}
        metrics = self.objective.test_summary(self.model, self.progress.best, self.test_x, final)
        weights = self.train_weights() if self.has_sample_weights() else None
        return TrainResult(self.progress.history, run_summary(self, metrics, weights), weights)

    def record(self, result: TrainResult) -> RunRecord:
        """The finished run as plain data for :mod:`slem.report` (:func:`trainer_record`)."""
        return trainer_record(self, result)

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stands."""
        sw = self.sample_weights
        teacher = sw.teacher if sw is not None else None
        return {
            "observer": sw.observer.state_dict() if sw is not None else None,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "methodology": self.methodology.state_dict() if self.methodology is not None else None,
            "teacher": teacher.net.state_dict() if teacher is not None else None,
            **self.progress.state_dict(),
            **rng_state(self.generator),
            "config": self.config.model_dump(mode="json"),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.methodology is not None and state["methodology"] is not None:
            self.methodology.load_state_dict(state["methodology"])
        sw = self.sample_weights
        if sw is not None and sw.teacher is not None:
            sw.teacher.net.load_state_dict(state["teacher"])
        if sw is not None and state.get("observer") is not None:
            sw.observer.load_state_dict(state["observer"])
        self.progress.load_state_dict(state)
        restore_rng(state, self.generator)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomic write: a kill during the write leaves the previous checkpoint intact."""
        self.last_checkpoint = save_atomic(self.state(), path)
        return self.last_checkpoint

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from ``path``.

        Raises:
            SlemError: the file is missing, damaged, or from a different model or method.
        """
        path = Path(path)
        load_checkpoint_into(path, self.load_state, self.device, ("model", "optimizer", "epoch"))
        self.last_checkpoint = path
