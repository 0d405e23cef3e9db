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
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import SGD, functional
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import Methodology, MLRSNet, lr_scale
from slem.train import losses as L
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig
from slem.train.trainer import EVAL_BATCH, NonFiniteLoss, Trainer, TrainResult


class ScheduleTrainer(Trainer):
    """Meta-learns (method ``lr_schedule``) or applies (method ``apply``) an MLR-SNet."""

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
        self.meta_training = config.method == "lr_schedule"
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
        o = config.optim
        self._inner_opt = SGD(
            lr=0.0, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
        )
        if self.meta_training:
            n_meta = len(task.meta) if task.meta is not None else 0
            if n_meta < task.n_classes:
                raise SlemError(
                    f"the meta set has {n_meta} samples, fewer than the {task.n_classes} "
                    "classes; raise data.meta_per_class"
                )
            self.meta_optimizer: torch.optim.Optimizer | None = torch.optim.Adam(
                self.schedule.live.parameters(), lr=s.lr, weight_decay=s.weight_decay
            )
        else:
            self.meta_optimizer = None
        self._f_model = functional(self.model)
        self.loss_norm = math.log(max(task.n_classes, 2))
        self.lr_state = self.schedule.initial_state(self.device)
        self.scale: float | None = None
        self.stage = -1 if self.meta_training else 0
        self.current_lr = 0.0
        self.lr_trace: list[float] = []
        self.stage_trace: list[tuple[int, int]] = []  # (global step, stage) at each switch
        n = len(self.schedule.stages)
        self.snapshot_epochs = {
            max(1, round(o.epochs * i / max(n - 1, 1))): i for i in range(n - 1)
        }

    # ------------------------------------------------------------------ schedule

    def lr_at(self, step: int) -> float:
        return self.current_lr

    def training_loss(self) -> float:
        """Mean cross-entropy on (up to 4096 of) the training samples, in eval mode."""
        self.model.eval()
        x, y = self.train_x[:4096], self.train_y[:4096]
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(y), EVAL_BATCH):
                logits = self.model(x[i : i + EVAL_BATCH])
                total += float(F.cross_entropy(logits, y[i : i + EVAL_BATCH], reduction="sum"))
        return total / max(len(y), 1)

    def _rescale(self) -> None:
        self.scale = lr_scale(self.training_loss(), self.task.n_classes, self.config.optim.momentum)

    def on_epoch_start(self) -> None:
        if self.scale is None:
            self._rescale()
        if self.meta_training:
            return
        fraction = self.epoch / self.config.optim.epochs
        stage = (
            self.schedule.stage_at(fraction)
            if self.config.schedule.swap_snapshots
            else len(self.schedule.stages) - 1
        )
        if stage != self.stage:
            # The scale stays the one from the initial loss. MLR-SNet's code recomputes it at
            # each switch, but its log(L * C) term goes to 0 (and the rate with it) once the
            # loss nears 1 / C, which easy tasks reach within the first third of a run.
            self.stage = stage
            self.stage_trace.append((self.global_step, stage))
        elif not self.stage_trace:
            self.stage_trace.append((self.global_step, stage))

    def end_epoch(self) -> dict[str, Any]:
        row = super().end_epoch()
        if self.meta_training and self.epoch in self.snapshot_epochs:
            self.schedule.snapshot(self.snapshot_epochs[self.epoch])
        return row

    # ------------------------------------------------------------------ steps

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        self.model.train()
        loss = L.cross_entropy(self.model(x), y).mean()
        self._check_finite(loss, "training loss")
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(loss, list(params.values()))
        stats: dict[str, float] = {"loss": float(loss.detach())}
        meta = self.meta_training and self.global_step % self.config.schedule.interval == 0
        if meta:
            named = dict(zip(params, grads, strict=True))
            stats["meta_loss"] = self._meta_step(loss.detach(), params, named)
        lr = self._next_lr(loss.detach())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for p, g in zip(params.values(), grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self._check_parameters()
        self.timings["meta" if meta else "plain"].append(time.perf_counter() - start)
        stats["lr"] = lr
        return stats

    def _next_lr(self, loss: Tensor) -> float:
        assert self.scale is not None
        with torch.no_grad():
            factor, self.lr_state = self.schedule(loss / self.loss_norm, self.lr_state, self.stage)
        lr = self.scale * float(factor)
        limit = self.config.schedule.max_lr
        if not math.isfinite(lr) or lr > limit:
            raise NonFiniteLoss(
                f"the learned learning rate became {lr:.4g} at epoch {self.epoch + 1}, step "
                f"{self.step_in_epoch + 1} (limit schedule.max_lr = {limit:g}); the last "
                "checkpoint before it is kept: check the artifact or lower schedule.lr and resume"
            )
        self.current_lr = lr
        self.lr_trace.append(lr)
        return lr

    def _meta_step(
        self, loss: Tensor, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]
    ) -> float:
        """One exact one-step hypergradient step on the live schedule net."""
        assert self.meta_optimizer is not None and self.scale is not None
        assert self.meta_x is not None and self.meta_y is not None
        factor, _ = self.schedule(loss / self.loss_norm, self.lr_state, -1)
        alpha = self.scale * factor
        o = self.config.optim
        step = SGD(
            lr=lambda _: alpha,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
        )
        detached = {n: p.detach() for n, p in params.items()}
        state = self._inner_opt.state_from_torch(self.optimizer, dict(params))
        virtual, _ = step.update(detached, {n: g.detach() for n, g in grads.items()}, state, {})
        take = torch.randperm(len(self.meta_y), generator=self.generator)
        take = take[: self.config.schedule.batch_size].to(self.device)
        meta_loss = F.cross_entropy(self._f_model(virtual, self.meta_x[take]), self.meta_y[take])
        self._check_finite(meta_loss, "meta loss")
        self.meta_optimizer.zero_grad(set_to_none=True)
        meta_loss.backward()
        for p in self.schedule.live.parameters():
            if p.grad is not None:
                self._check_finite(p.grad, "hypergradient")
        self.meta_optimizer.step()
        return float(meta_loss.detach())

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

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "schedule": {
                "lr_state": self.lr_state,
                "scale": self.scale,
                "stage": self.stage,
                "current_lr": self.current_lr,
                "lr_trace": self.lr_trace,
                "stage_trace": self.stage_trace,
                "meta_optimizer": (
                    self.meta_optimizer.state_dict() if self.meta_optimizer is not None else None
                ),
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        s = state["schedule"]
        h, c = (t.to(self.device) for t in s["lr_state"])
        self.lr_state = (h, c)
        self.scale, self.stage, self.current_lr = s["scale"], s["stage"], s["current_lr"]
        self.lr_trace, self.stage_trace = s["lr_trace"], s["stage_trace"]
        if self.meta_optimizer is not None and s["meta_optimizer"] is not None:
            self.meta_optimizer.load_state_dict(s["meta_optimizer"])
