"""Training driven by a learned learning-rate schedule (MLR-SNet).

:class:`ScheduleTrainer` is the :class:`~slem.train.trainer.Trainer` loop with one change per
step: the learning rate comes from the schedule net, fed the step's loss. With method
``lr_schedule`` it also meta-learns the net: every ``schedule.interval`` steps it takes the
engine's differentiable SGD step ``w' = w - lr(theta) * d`` (``d`` the momentum / weight-decay
direction of the real optimizer) and moves ``theta`` down the meta-set loss at ``w'``. The
direction does not depend on ``theta``, so this hypergradient is exact for one step and needs
no second derivatives. With method ``apply`` the net is frozen: no meta set, and the cost of
plain training plus one LSTM cell per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import RateProblem, functional
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import Methodology, MLRSNet, lr_scale
from slem.methodology.schedule import ScheduleState
from slem.train import losses as L
from slem.train.callbacks import Callback
from slem.train.config import MetaConfig, TrainConfig
from slem.train.guard import NonFiniteLoss
from slem.train.meta_step import MetaStep, PendingStep, phased_meta_step
from slem.train.methods import method_spec
from slem.train.record import RunRecord, lr_arrays
from slem.train.trainer import Trainer, TrainResult


def training_loss(trainer: Trainer) -> float:
    """Mean cross-entropy on (up to 4096 of) the training samples, in eval mode: the initial
    loss that scales a learned schedule's rates (:func:`~slem.methodology.lr_scale`)."""
    x, y = trainer.train_x[:4096], trainer.train_y[:4096]
    return float(trainer.labels.eval_losses(trainer.model, x, y).mean())


class LearnedRate:
    """The learning rate an MLR-SNet gives a run, step by step: its scale (from the initial
    loss), the stage driving each part of the run, the LSTM memory and the trace of rates.
    :class:`ScheduleTrainer` and the joint :class:`~slem.train.bundle.BundleTrainer` share it.
    """

    def __init__(
        self,
        net: MLRSNet,
        config: TrainConfig,
        n_classes: int,
        meta_training: bool,
        device: torch.device,
    ) -> None:
        self.net = net
        self.config = config
        self.n_classes = n_classes
        self.meta_training = meta_training
        self.loss_norm = math.log(max(n_classes, 2))
        self.lstm_state = net.initial_state(device)
        self.scale: float | None = None
        self.stage = -1 if meta_training else 0
        self.current = 0.0
        self.trace: list[float] = []
        self.stage_trace: list[tuple[int, int]] = []  # (global step, stage) at each switch
        n, epochs = len(net.stages), config.optim.epochs
        self.snapshot_epochs = {max(1, round(epochs * i / max(n - 1, 1))): i for i in range(n - 1)}

    def rescale(self, initial_loss: float) -> None:
        self.scale = lr_scale(initial_loss, self.n_classes, self.config.optim.momentum)

    def on_epoch_start(self, epoch: int, global_step: int) -> None:
        """Swap in the snapshot for this part of the run (applying a frozen net)."""
        if self.meta_training:
            return
        fraction = epoch / self.config.optim.epochs
        stage = (
            self.net.stage_at(fraction)
            if self.config.schedule.swap_snapshots
            else len(self.net.stages) - 1
        )
        if stage != self.stage:
            # The scale stays the one from the initial loss. MLR-SNet's code recomputes it at
            # each switch, but its log(L * C) term goes to 0 (and the rate with it) once the
            # loss nears 1 / C, which easy tasks reach within the first third of a run.
            self.stage = stage
            self.stage_trace.append((global_step, stage))
        elif not self.stage_trace:
            self.stage_trace.append((global_step, stage))

    def on_epoch_end(self, epochs_done: int) -> None:
        """Snapshot the live net at the stage boundaries of meta-training."""
        if self.meta_training and epochs_done in self.snapshot_epochs:
            self.net.snapshot(self.snapshot_epochs[epochs_done])

    def differentiable(
        self,
        loss: Tensor,
        live: Callable[[Tensor, ScheduleState], tuple[Tensor, ScheduleState]] | None = None,
    ) -> Tensor:
        """The rate the live net would give this step, with its graph (for meta steps);
        ``live`` may be a functional stand-in for the live net."""
        assert self.scale is not None
        net = live if live is not None else self.net.live
        factor, _ = net(loss.detach() / self.loss_norm, self.lstm_state)
        return self.scale * factor

    def next(self, loss: Tensor, epoch: int, step_in_epoch: int) -> float:
        """Advance the LSTM on this step's loss and return the rate to step with."""
        assert self.scale is not None
        with torch.no_grad():
            factor, self.lstm_state = self.net(loss / self.loss_norm, self.lstm_state, self.stage)
        lr = self.scale * float(factor)
        limit = self.config.schedule.max_lr
        if not math.isfinite(lr) or lr > limit:
            raise NonFiniteLoss(
                f"the learned learning rate became {lr:.4g} at epoch {epoch + 1}, step "
                f"{step_in_epoch + 1} (limit schedule.max_lr = {limit:g}); the last "
                "checkpoint before it is kept: check the artifact or lower schedule.lr and resume"
            )
        self.current = lr
        self.trace.append(lr)
        return lr

    def state(self) -> dict[str, Any]:
        return {
            "lr_state": self.lstm_state,
            "scale": self.scale,
            "stage": self.stage,
            "current_lr": self.current,
            "lr_trace": self.trace,
            "stage_trace": self.stage_trace,
        }

    def load_state(self, s: dict[str, Any], device: torch.device) -> None:
        h, c = (t.to(device) for t in s["lr_state"])
        self.lstm_state = (h, c)
        self.scale, self.stage, self.current = s["scale"], s["stage"], s["current_lr"]
        self.trace, self.stage_trace = s["lr_trace"], s["stage_trace"]


class ScheduleTrainer(Trainer):
    """Meta-learns (method ``lr_schedule``) or applies (method ``apply``) an MLR-SNet; its
    meta step comes in two phases (:class:`~slem.train.meta_step.PhasedMetaStep`)."""

    serial_only = (
        "a learned learning-rate schedule cannot train data-parallel yet (its rate reads each "
        "step's batch loss); run it on one process"
    )

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        model: nn.Module | None = None,
        methodology: Methodology | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        s = config.schedule
        self.meta_training = method_spec(config).is_meta
        if methodology is None:
            if not self.meta_training:
                raise SlemError("method apply needs the frozen lr_schedule artifact")
            with torch.random.fork_rng(devices=[]):  # a run does not depend on what ran before
                torch.manual_seed(config.seed + 1_000_003)
                methodology = MLRSNet(s.hidden, s.stages, s.switch_at)
        if not isinstance(methodology, MLRSNet):
            raise SlemError(f"a '{methodology.kind}' methodology is not a learning-rate schedule")
        super().__init__(config, task, model, methodology, callbacks, device)
        self.schedule: MLRSNet = methodology.to(self.device)
        self.meta_step: MetaStep | None = None
        if self.meta_training:
            n_meta = len(task.meta) if task.meta is not None else 0
            if n_meta < task.n_classes:
                raise SlemError(
                    f"the meta set has {n_meta} samples, fewer than the {task.n_classes} "
                    "classes; raise data.meta_per_class"
                )
            # lookahead of a RateProblem: the exact one-step hypergradient; Adam on the net
            meta = MetaConfig(hypergrad=config.meta.hypergrad, lr=s.lr, weight_decay=s.weight_decay)
            live = dict(self.schedule.live.named_parameters())
            self.meta_step = MetaStep(
                meta, self.optimizer, live, self._check_finite, [self.observe_hypergradient]
            )
        self._f_model = functional(self.model)
        self.rate = LearnedRate(
            self.schedule, config, task.n_classes, self.meta_training, self.device
        )

    # ------------------------------------------------------------------ schedule

    @property
    def lr_trace(self) -> list[float]:
        return self.rate.trace

    @property
    def stage_trace(self) -> list[tuple[int, int]]:
        return self.rate.stage_trace

    @property
    def scale(self) -> float | None:
        return self.rate.scale

    @property
    def loss_norm(self) -> float:
        return self.rate.loss_norm

    @property
    def lr_state(self) -> tuple[Tensor, Tensor]:
        return self.rate.lstm_state

    def lr_at(self, step: int) -> float:
        return self.rate.current

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer | None:
        """The schedule net's optimizer (None when it is frozen)."""
        return self.meta_step.meta_optimizer if self.meta_step is not None else None

    def on_epoch_start(self) -> None:
        if self.rate.scale is None:
            self.rate.rescale(training_loss(self))
        self.rate.on_epoch_start(self.progress.epoch, self.progress.global_step)

    def end_epoch(self) -> dict[str, Any]:
        row = super().end_epoch()
        self.rate.on_epoch_end(self.progress.epoch)
        return row

    # ------------------------------------------------------------------ steps

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        if self.meta_step_due:
            return self.meta_train_step(x, y)
        start = time.perf_counter()
        loss, params, grads = self._loss_and_grads(x, y)
        stats = self._rate_step(loss, params, grads)
        self.progress.timings["plain"].append(time.perf_counter() - start)
        return {"loss": float(loss), **stats}

    @property
    def meta_step_due(self) -> bool:
        """The next training step is a meta step (every ``schedule.interval`` steps)."""
        interval = self.config.schedule.interval
        return self.meta_training and self.progress.global_step % interval == 0

    def meta_hypergradient(self, x: Tensor, y: Tensor, idx: Tensor | None = None) -> PendingStep:
        """Phase one of a meta step on the batch ``(x, y)``: the batch's loss and gradient
        (the real step's) and the hypergradient of the meta-set loss with respect to the live
        schedule net (:meth:`meta_problem`); nothing moves yet."""
        start = time.perf_counter()
        loss, params, grads = self._loss_and_grads(x, y)
        step = self.meta_step
        assert step is not None
        result = step.hypergradient(*self.meta_problem(x, y, loss, grads))
        return PendingStep(result, x, y, start, params, loss=loss, grads=grads)

    def real_step(self, pending: PendingStep) -> dict[str, float]:
        """Phase two: the real step at the rate the schedule net gives as it stands now
        (after the meta update); returns the step's ``loss``, ``meta_loss`` and ``lr``."""
        assert pending.loss is not None and pending.grads is not None
        meta_loss = pending.result.outer_loss
        stats = self._rate_step(pending.loss, pending.params, pending.grads)
        self.progress.timings["meta"].append(time.perf_counter() - pending.start)
        return {"loss": float(pending.loss), "meta_loss": meta_loss, **stats}

    def meta_train_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """A meta step on the batch: :meth:`meta_hypergradient`, one step of the schedule
        net's optimizer, :meth:`real_step` at the updated net's rate."""
        return phased_meta_step(self, x, y)

    def _loss_and_grads(
        self, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The batch's (detached) training loss and its gradient by inner parameter."""
        self.model.train()
        loss = L.cross_entropy(self.model(x), y).mean()
        self._check_finite(loss, "training loss")
        params = self.inner_params()
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        return loss.detach(), params, grads

    def _rate_step(
        self, loss: Tensor, params: dict[str, Tensor], grads: dict[str, Tensor]
    ) -> dict[str, float]:
        """The real step: the schedule's rate for ``loss``, then the optimizer on ``grads``."""
        lr = self.rate.next(loss, self.progress.epoch, self.progress.step_in_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for name, p in params.items():
            p.grad = grads[name]
        self.optimizer.step()
        self._check_parameters()
        return {"lr": lr}

    def meta_problem(
        self, x: Tensor, y: Tensor, loss: Tensor, grads: dict[str, Tensor]
    ) -> tuple[RateProblem, Any, Any]:
        """The bilevel problem of a meta step on the batch ``(x, y)`` whose training loss is
        ``loss`` and gradient ``grads`` (the real step's), with its inner and outer batch: the
        virtual step ``w - lr(theta) * d`` (``d`` the real optimizer's direction, momentum and
        weight decay included) at the rate the live schedule net gives for ``loss``, then the
        cross-entropy of a meta batch. The direction does not depend on ``theta``: the
        hypergradient is exact for one step and needs no second derivative
        (:class:`~slem.bilevel.RateProblem`)."""
        step = self.meta_step
        assert step is not None and self.meta_x is not None and self.meta_y is not None
        rate, live = self.rate, functional(self.schedule.live)

        def lr(hyper: dict[str, Tensor]) -> Tensor:
            return rate.differentiable(loss, live=lambda value, state: live(hyper, value, state))

        params = self.inner_params()
        opt, state = step.virtual_optimizer(params, lr)
        problem = RateProblem(
            params,
            step.hyper,
            self._meta_set_loss,
            self._meta_set_loss,
            opt,
            optimizer_state=state,
            grads=grads,
        )
        take = torch.randperm(len(self.meta_y), generator=self.generator)
        take = take[: self.config.schedule.batch_size].to(self.device)
        return problem, (x, y), (self.meta_x[take], self.meta_y[take])

    def _meta_set_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: tuple[Tensor, Tensor]
    ) -> Tensor:
        """Cross-entropy of a batch at ``params`` (the inner loss on a training batch, the
        outer loss on a meta batch)."""
        loss = F.cross_entropy(self._f_model(params, batch[0]), batch[1])
        self._check_finite(loss, "meta loss")
        return loss

    # ------------------------------------------------------------------ results and state

    def finish(self) -> TrainResult:
        result = super().finish()
        result.summary.update(
            lr_scale=self.scale,
            lr_first=self.lr_trace[0] if self.lr_trace else None,
            lr_last=self.lr_trace[-1] if self.lr_trace else None,
            lr_mean=sum(self.lr_trace) / len(self.lr_trace) if self.lr_trace else None,
        )
        return result

    def record(self, result: TrainResult) -> RunRecord:
        record = super().record(result)
        o = self.config.optim
        record.arrays.update(
            lr_arrays(self.lr_trace, self.stage_trace, o.lr, o.epochs * self.plan.steps_per_epoch)
        )
        record.info.update(lr0=o.lr, steps_per_epoch=self.plan.steps_per_epoch)
        return record

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "schedule": {
                **self.rate.state(),
                "meta_optimizer": (
                    self.meta_optimizer.state_dict() if self.meta_optimizer is not None else None
                ),
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        s = state["schedule"]
        self.rate.load_state(s, self.device)
        if self.meta_optimizer is not None and s["meta_optimizer"] is not None:
            self.meta_optimizer.load_state_dict(s["meta_optimizer"])
