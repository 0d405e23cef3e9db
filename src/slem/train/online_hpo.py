"""Method ``hypergradient``: the learning rate and weight decay tuned during one training run.

Every real step is the plain ``torch.optim`` step; alongside it
:class:`~slem.bilevel.ForwardTangents` carries ``d theta / d phi`` for ``phi = (log lr, log
weight decay)`` (first-order forward mode: Franceschi et al. 2017's RTHO without the Hessian
term). Every ``hypergradient.horizon`` steps (default one epoch) the hypergradient of the
validation loss (the meta set's, when the task has one) moves ``phi`` by one Adam step. The
tangents then keep the whole trajectory (``hypergradient.memory`` 1, the default: the
hypergradient of the loss now with respect to a ``phi`` held since the start), fade, or
restart (``memory`` 0, a truncated horizon). Short horizons favour small rates (Wu et al.
2018): one-step updates (hypergradient descent, Baydin et al. 2018) and one-epoch truncation
settle far below the rates a search finds (``benchmarks/hpo_gradient_online.py``). The base
rate scales the run's ``optim.schedule`` (cosine by default), so the schedule keeps its shape
and learns its height. Cost: plain training, one forward and backward of an outer batch per
update, and two small reverse passes through the optimizer update per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import ForwardTangents, from_torch, functional
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import Methodology
from slem.train.callbacks import Callback
from slem.train.config import MetaConfig, TrainConfig
from slem.train.meta_step import make_meta_optimizer, step_hyper
from slem.train.record import RunRecord
from slem.train.trainer import Trainer

#: the log-hyperparameters by the name ``hypergradient.tune`` gives them
NAMES = {"lr": "log_lr", "weight_decay": "log_weight_decay"}


class OnlineHPOTrainer(Trainer):
    """Trains with the rate and weight decay its hypergradients set (see the module doc).

    Raises:
        SlemError: an optimizer other than SGD / Adam, a weight decay of 0 that is to be
            tuned on a log scale, a starting value outside its range, or a horizon longer
            than the run (the hyperparameters would never move).
    """

    serial_only = (
        "method hypergradient cannot train data-parallel yet (its tangents follow one "
        "process's steps); run it on one process"
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
        super().__init__(config, task, model, methodology, callbacks, device)
        h, o = config.hypergradient, config.optim
        if o.optimizer not in ("sgd", "adam"):
            raise SlemError(
                f"method hypergradient follows SGD and Adam steps, not optim.optimizer "
                f"{o.optimizer}; set optim.optimizer sgd or adam"
            )
        start = {"lr": o.lr, "weight_decay": o.weight_decay}
        ranges = {"lr": h.lr_range, "weight_decay": h.weight_decay_range}
        for name in h.tune:
            low, high = ranges[name]
            if not low <= start[name] <= high:
                fix = (
                    "set optim.weight_decay > 0 (e.g. 1e-4) or leave weight_decay out of "
                    "hypergradient.tune"
                    if name == "weight_decay" and start[name] == 0
                    else f"move optim.{name} inside or widen hypergradient.{name}_range"
                )
                raise SlemError(
                    f"method hypergradient tunes {name} on a log scale in [{low:g}, {high:g}], "
                    f"but optim.{name} is {start[name]:g}; {fix}"
                )
        total = o.epochs * self.plan.steps_per_epoch
        if h.horizon > total:
            raise SlemError(
                f"hypergradient.horizon {h.horizon} is longer than the run ({total} steps): the "
                "hyperparameters would never move; lower it (0: one epoch)"
            )
        self.bounds = {NAMES[n]: (math.log(ranges[n][0]), math.log(ranges[n][1])) for n in h.tune}
        self.hyper = {
            NAMES[n]: nn.Parameter(torch.tensor(math.log(start[n]), device=self.device))
            for n in h.tune
        }
        meta = MetaConfig(lr=h.lr, weight_decay=0.0)
        self.hyper_optimizer = make_meta_optimizer(list(self.hyper.values()), meta)
        self.tangents = ForwardTangents({k: v.detach() for k, v in self.hyper.items()})
        self._f_model = functional(self.model)
        self.outer_x, self.outer_y = (
            (self.meta_x, self.meta_y)
            if self.meta_x is not None and self.meta_y is not None
            else (self.val_x, self.val_y)
        )
        #: one row per hyperparameter update: step, lr, weight_decay, outer_loss, norm
        self.trace: list[dict[str, float]] = []

    # ------------------------------------------------------------------ the hyperparameters

    def current(self, name: str) -> float:
        """The base learning rate (``lr``) or the weight decay now."""
        log = self.hyper.get(NAMES[name])
        if log is not None:
            return math.exp(float(log.detach()))
        return float(self.config.optim.lr if name == "lr" else self.config.optim.weight_decay)

    def schedule_factor(self, step: int) -> float:
        """The run's schedule at ``step`` relative to its base rate (1 for ``constant``)."""
        return self.plan.lr(self.progress.epoch, step) / self.config.optim.lr

    def lr_at(self, step: int) -> float:
        return self.schedule_factor(step) * self.current("lr")

    def schedule_lr(self) -> None:
        super().schedule_lr()
        wd = self.current("weight_decay")
        for g in self.optimizer.param_groups:
            g["weight_decay"] = wd

    @property
    def horizon(self) -> int:
        return self.config.hypergradient.horizon or self.plan.steps_per_epoch

    # ------------------------------------------------------------------ steps

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        self.model.train()
        loss = self.per_sample_losses(self.model(x), y).mean()
        self._check_finite(loss, "training loss")
        params = self.inner_params()
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        if self.progress.epoch < self.config.optim.epochs:  # not while fine-tuning
            self._carry_tangents(params, grads)
        for name, p in params.items():
            p.grad = grads[name]
        self.optimizer.step()
        self._check_parameters()
        stats: dict[str, float] = {"loss": float(loss.detach())}
        training = self.progress.epoch < self.config.optim.epochs
        if training and (self.progress.global_step + 1) % self.horizon == 0:
            stats.update(self._update_hyperparameters())
        self.progress.timings["plain"].append(time.perf_counter() - start)
        return stats

    def _twin(self, params: dict[str, Tensor]) -> tuple[Any, Any]:
        """The real optimizer's differentiable twin, its rate and weight decay functions of
        the log-hyperparameters being tuned (the others as the optimizer holds them)."""
        factor = self.schedule_factor(self.progress.global_step)

        def lr(h: dict[str, Tensor]) -> Tensor:
            return factor * h["log_lr"].exp()

        def weight_decay(h: dict[str, Tensor]) -> Tensor:
            return h["log_weight_decay"].exp()

        return from_torch(
            self.optimizer,
            params,
            lr if "log_lr" in self.hyper else None,
            weight_decay if "log_weight_decay" in self.hyper else None,
        )

    def _carry_tangents(self, params: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
        twin, state = self._twin(params)
        hyper = {k: v.detach() for k, v in self.hyper.items()}
        self.tangents.step(twin, params, grads, state, hyper)

    def _outer_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: tuple[Tensor, Tensor]
    ) -> Tensor:
        return F.cross_entropy(self._f_model(params, batch[0]), batch[1])

    def _update_hyperparameters(self) -> dict[str, float]:
        """One Adam step of the log-hyperparameters on the hypergradient of an outer batch's
        loss along the steps the tangents hold; then they restart (``hypergradient.memory``
        0) or fade."""
        n = len(self.outer_y)
        take = torch.randperm(n, generator=self.generator)[: self.config.hypergradient.batch_size]
        take = take.to(self.outer_y.device)
        batch = (self.outer_x[take], self.outer_y[take])
        hyper = {k: v.detach() for k, v in self.hyper.items()}
        result = self.tangents.hypergrad(self._outer_loss, self.inner_params(), hyper, batch)
        for name, g in result.grads.items():
            self._check_finite(g, f"hypergradient of {name}")
        step_hyper(self.hyper_optimizer, self.hyper, result.grads)
        with torch.no_grad():
            for name, (low, high) in self.bounds.items():
                self.hyper[name].clamp_(low, high)
        self.tangents.decay(self.config.hypergradient.memory)
        norm = math.sqrt(sum(float(g.double() ** 2) for g in result.grads.values()))
        row = {
            "step": float(self.progress.global_step + 1),
            "lr": self.current("lr"),
            "weight_decay": self.current("weight_decay"),
            "outer_loss": result.outer_loss,
            "hypergrad_norm": norm,
        }
        self.trace.append(row)
        return {"meta_loss": result.outer_loss, "hypergrad_norm": norm}

    # ------------------------------------------------------------------ results and state

    def end_epoch(self) -> dict[str, Any]:
        row = super().end_epoch()
        row["weight_decay"] = self.current("weight_decay")
        return row

    def finish(self) -> Any:
        result = super().finish()
        result.summary.update(
            tuned_lr=self.current("lr"), tuned_weight_decay=self.current("weight_decay")
        )
        return result

    def record(self, result: Any) -> RunRecord:
        record = super().record(result)
        if self.trace:  # the starting values first (no outer loss measured there)
            o = self.config.optim
            start = {
                "step": 0.0,
                "lr": o.lr,
                "weight_decay": o.weight_decay,
                "outer_loss": math.nan,
            }
            for key in ("step", "lr", "weight_decay", "outer_loss"):
                record.arrays[f"hyper_{key}"] = np.asarray(
                    [start[key]] + [r[key] for r in self.trace], dtype=np.float64
                )
        record.info.update(
            hyper_tuned=list(self.config.hypergradient.tune),
            hyper_start_lr=self.config.optim.lr,
            hyper_start_weight_decay=self.config.optim.weight_decay,
            steps_per_epoch=self.plan.steps_per_epoch,
        )
        return record

    def state(self) -> dict[str, Any]:
        t = self.tangents
        return {
            **super().state(),
            "hypergradient": {
                "hyper": {k: v.detach().clone() for k, v in self.hyper.items()},
                "optimizer": self.hyper_optimizer.state_dict(),
                "tangents": {"params": t.params, "state": t.state, "steps": t.steps},
                "trace": self.trace,
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        s = state["hypergradient"]
        with torch.no_grad():
            for k, v in s["hyper"].items():
                self.hyper[k].copy_(v)
        self.hyper_optimizer.load_state_dict(s["optimizer"])
        tangents = s["tangents"]
        self.tangents.params = tangents["params"]
        self.tangents.state = list(tangents["state"])
        self.tangents.steps = tangents["steps"]
        self.trace = list(s["trace"])


__all__ = ["NAMES", "OnlineHPOTrainer"]
