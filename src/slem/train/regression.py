"""Regression's meta-learned loss: :class:`HWNetTrainer` (method ``hwnet``, or ``apply`` of
an hwnet artifact).

The plain regression losses (``mse``: ``r²/2``, the same ``l2`` the HWnet mixes; ``l1``;
``huber``, delta ``loss.huber_delta``) run in :class:`~slem.train.Trainer` with the
:class:`~slem.train.objective.Regression` objective (robust target units, validation MAE
selection). The HWnet trainer adds the learned loss: ERM warm-up epochs (``hwnet.warmup_loss``),
then every ``meta.interval`` steps a meta step (:class:`~slem.train.meta_step.MetaStep` over a
generic :class:`~slem.bilevel.BilevelProblem`: the inner loss is the HWnet-set loss of the
batch, the outer loss the MSE on a clean meta batch, DAC-MR consistency on unlabeled training
inputs, or both), an Adam step on the net, and the real step with the updated net. With
``apply`` the net is frozen: no meta set.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slem.bilevel import BilevelProblem, functional
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import HyperWeightNet, Methodology
from slem.methodology.regression import input_stats
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig
from slem.train.meta_step import MetaStep
from slem.train.methods import get_method, method_spec
from slem.train.objective import Regression, flat_predictions
from slem.train.objective import robust_scaling as robust_scaling
from slem.train.record import RunRecord, hwnet_arrays
from slem.train.trainer import Trainer, TrainResult

#: the residual range of the learned-loss plot, in robust target units
PLOT_RANGE = 6.0


def huber(r: Tensor, delta: float) -> Tensor:
    """Huber's loss with threshold ``delta``: ``r²/2`` inside, ``delta (|r| - delta/2)``
    outside."""
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def new_hwnet(config: TrainConfig) -> HyperWeightNet:
    """The untrained HWnet of ``config.hwnet``, seeded apart from the run's random state."""
    h = config.hwnet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1_000_003)
        return HyperWeightNet(
            h.mode,
            list(h.losses),
            h.use_inputs,
            h.hidden,
            signed=h.signed,
            weighted_loss=h.weighted_loss,
        )


class HWNetTrainer(Trainer):
    """Meta-learns (method ``hwnet``) or applies (``apply``) an HWnet on a regression task;
    see the module docstring."""

    serial_only = "HWnet cannot train data-parallel yet; run it on one process"

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        model: nn.Module | None = None,
        methodology: Methodology | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        self.meta_training = method_spec(config).is_meta
        get_method("hwnet").check_target(task)
        if methodology is None:
            if not self.meta_training:
                raise SlemError(
                    f"method {config.method} needs the frozen methodology (load it with "
                    "slem.methodology.load_methodology)"
                )
            methodology = new_hwnet(config)
        if not isinstance(methodology, HyperWeightNet):
            raise SlemError(
                f"cannot use a '{methodology.kind}' methodology on the regression task "
                f"'{task.name}'; regression takes an hwnet artifact"
            )
        if self.meta_training and "clean" in config.meta.objective:
            n_meta = len(task.meta) if task.meta is not None else 0
            if n_meta < 2:
                raise SlemError(
                    f"meta.objective {config.meta.objective} needs a clean meta set of at least "
                    f"2 samples, not {n_meta}: set data.meta_size (e.g. 30), or use "
                    "meta.objective dac"
                )
        super().__init__(config, task, model, methodology, callbacks, device)
        assert isinstance(self.objective, Regression)
        self.targets: Regression = self.objective
        self.hwnet: HyperWeightNet = methodology
        self.meta_step: MetaStep | None = None
        self._f_model = functional(self.model)
        if self.meta_training:
            self.meta_step = MetaStep(
                config.meta,
                self.optimizer,
                dict(self.hwnet.named_parameters()),
                self._check_finite,
                [self.observe_hypergradient],
            )
            self._f_hw = functional(self.hwnet)

    @property
    def in_warmup(self) -> bool:
        return self.meta_training and self.progress.epoch < self.config.meta.warmup_epochs

    def _stats(self, x: Tensor | None) -> Tensor | None:
        if not self.hwnet.use_inputs:
            return None
        if x is None:
            raise SlemError("this HWnet reads the inputs' statistics: pass the inputs x")
        return input_stats(x)

    def _hw_loss(self, residuals: Tensor, x: Tensor | None) -> Tensor:
        """The HWnet's per-sample losses with its output held constant (the real step:
        gradients reach the model only)."""
        with torch.no_grad():
            out = self.hwnet(residuals.detach(), self._stats(x))
        return self.hwnet.combine(residuals, out)

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        if self.in_warmup:  # the method's own loss: hwnet.warmup_loss
            return super().train_step(x, y, idx)
        if self.meta_training and self.progress.global_step % self.config.meta.interval == 0:
            return self.meta_train_step(x, y)
        start = time.perf_counter()
        self.model.train()
        pred = flat_predictions(self.model(x), len(x))
        loss = self._hw_loss(pred - self.targets.standardize(y), x).mean()
        return self._optimize(loss, start)

    def _inner_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: tuple[Any, ...]
    ) -> Tensor:
        """The HWnet-set loss of the batch as a function of the model's and the net's
        parameters; the net reads the detached residuals."""
        x, z, stats = batch
        net = self.hwnet
        r = flat_predictions(self._f_model(params, x), len(x)) - z
        return net.combine(r, self._f_hw(hyper, r.detach(), stats)).mean()

    def _outer_batch(self) -> dict[str, Tensor]:
        meta = self.config.meta
        out: dict[str, Tensor] = {}
        if "clean" in meta.objective:
            assert self.meta_x is not None and self.meta_y is not None
            take = torch.randperm(len(self.meta_y), generator=self.generator)[: meta.batch_size]
            take = take.to(self.device)
            out["x"], out["z"] = self.meta_x[take], self.targets.standardize(self.meta_y[take])
        if "dac" in meta.objective:
            out.update(self.dac_views(meta.batch_size))
        return out

    def _outer_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> Tensor:
        """Clean meta MSE (standardized units), DAC-MR consistency (MSE between predictions
        on strong views and the detached predictions on weak views), or both."""
        meta = self.config.meta
        total = torch.zeros((), device=self.device)
        if "z" in batch:
            pred = flat_predictions(self._f_model(params, batch["x"]), len(batch["x"]))
            mse = ((pred - batch["z"]) ** 2).mean()
            total = total + (meta.clean_weight if meta.objective == "clean+dac" else 1.0) * mse
        if "weak" in batch:
            n = len(batch["weak"])
            with torch.no_grad():
                target = flat_predictions(self._f_model(params, batch["weak"]), n).detach()
            pred = flat_predictions(self._f_model(params, batch["strong"]), n)
            total = total + meta.dac_weight * ((pred - target) ** 2).mean()
        return total

    def meta_problem(self, x: Tensor, y: Tensor) -> tuple[BilevelProblem, Any, Any]:
        """The bilevel problem of a meta step on the batch ``(x, y)``, with its inner and
        outer batch: one virtual step on the HWnet-set loss (the net reads the detached
        residuals), then the meta objective (clean MSE in robust units, DAC-MR, or both)."""
        step = self.meta_step
        assert step is not None
        z = self.targets.standardize(y)
        problem = step.problem(self.inner_params(), self._inner_loss, self._outer_loss)
        return problem, (x, z, self._stats(x)), self._outer_batch()

    def meta_train_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """A meta step on the batch (the HWnet moves), then the real step with the updated
        net; returns the step's ``loss`` and ``meta_loss``."""
        start = time.perf_counter()
        step = self.meta_step
        assert step is not None
        self.model.train()
        problem, inner, outer = self.meta_problem(x, y)
        result = step(problem, inner, outer)
        # the real step, with the updated net
        z = inner[1]
        pred = flat_predictions(self.forward(x), len(x))
        loss = self._hw_loss(pred - z, x).mean()
        self._check_finite(loss, "training loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._check_parameters()
        self.progress.timings["meta"].append(time.perf_counter() - start)
        return {"loss": float(loss.detach()), "meta_loss": result.outer_loss}

    def has_sample_weights(self) -> bool:
        """In mode weight, the HWnet sets a weight per sample."""
        return self.hwnet.mode == "weight"

    def train_residuals(self) -> Tensor:
        """Every training sample's residual in robust units (eval mode)."""
        t = self.targets
        return t.standardize(t.predict(self.model, self.train_x)) - t.standardize(self.train_y)

    def train_weights(self) -> np.ndarray:
        """In mode weight, the HWnet's raw weight (in (0, 1)) of every training sample."""
        if not self.has_sample_weights():
            raise SlemError("sample weights exist only for an HWnet in mode weight")
        w = self.hwnet.curve(self.train_residuals(), self._stats(self.train_x))
        return w.cpu().numpy()

    def finish(self) -> TrainResult:
        result = super().finish()
        result.summary["hwnet_mode"] = self.hwnet.mode
        return result

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer | None:
        """The HWnet's optimizer (None unless it is meta-learned)."""
        return self.meta_step.meta_optimizer if self.meta_step is not None else None

    def state(self) -> dict[str, Any]:
        out = super().state()
        if self.meta_optimizer is not None:
            out["meta_optimizer"] = self.meta_optimizer.state_dict()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if self.meta_optimizer is not None and state.get("meta_optimizer") is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])

    def record(self, result: TrainResult) -> RunRecord:
        """Adds the learned loss (an HWnet's mixture or weight against the residual)."""
        record = super().record(result)
        record.arrays.update(hwnet_arrays(self.hwnet, PLOT_RANGE))
        record.info.update(hwnet_mode=self.hwnet.mode, hwnet_losses=list(self.hwnet.losses))
        return record
