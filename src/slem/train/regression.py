"""Regression with noisy targets: plain losses and the meta-learned HWnet loss.

:class:`RegressionTrainer` reuses :class:`~slem.train.trainer.Trainer`'s loop, checkpoints,
exact resume and callbacks, with targets instead of class labels:

* **Robust target units.** The model predicts *standardized* targets ``z = (y - c) / s``
  with ``c`` the median and ``s = 1.4826 ⋅ MAD`` of the (noisy) training targets (falling
  back to IQR / 1.349, then the standard deviation, then 1). Unlike the mean and standard
  deviation, these are barely moved by a minority of gross outliers, so a residual of 3
  means "three typical deviations" on every task: the Huber delta and the HWnet's input
  mean the same thing on any target scale, which is what lets a learned loss transfer.
* **Methods.** ``mse`` (``r²/2``, the same ``l2`` the HWnet mixes, so a learning rate means
  the same for both), ``l1``, ``huber`` (delta ``loss.huber_delta`` in robust units), and
  ``hwnet``: ERM warm-up epochs, then every ``meta.interval`` steps a meta step with the
  bilevel engine (a generic :class:`~slem.bilevel.BilevelProblem`: the inner loss is the
  HWnet-set loss of the batch, the outer loss the MSE on a clean meta batch, DAC-MR
  consistency on unlabeled training inputs, or both), an Adam step on the net, and the
  real step with the updated net. ``apply`` trains with a frozen HWnet artifact, no meta set.
* **Metrics.** Validation MSE and MAE against the *noisy* validation targets; test MSE and
  MAE against the clean test targets, in original units. The best epoch is the one with the
  lowest validation MAE: the validation targets carry the same outliers as the training
  targets (no clean data is used for selection), and the squared error of a few outliers
  ten standard deviations away would dominate a validation MSE, so it would pick the
  epoch that best fits the outliers; the absolute error weighs them linearly and mostly
  measures the fit to the bulk of clean targets.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slem.bilevel import functional
from slem.data.task import Split, Task
from slem.errors import SlemError
from slem.methodology import HyperWeightNet, Methodology
from slem.methodology.regression import input_stats
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig
from slem.train.meta_step import MetaStep
from slem.train.methods import method_spec, target_error
from slem.train.models import build_model
from slem.train.objective import EVAL_BATCH
from slem.train.record import RunRecord, hwnet_arrays
from slem.train.trainer import Trainer, TrainResult

#: the residual range of the learned-loss plot, in robust target units
PLOT_RANGE = 6.0


def robust_scaling(y: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 ⋅ MAD)`` of ``y``; the scale falls back to IQR / 1.349, then the
    standard deviation, then 1 when the previous one is zero (or not finite)."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    if not len(y):
        return 0.0, 1.0
    center = float(np.median(y))
    q75, q25 = np.percentile(y, [75, 25])
    for scale in (
        1.4826 * float(np.median(np.abs(y - center))),
        float(q75 - q25) / 1.349,
        float(y.std()),
    ):
        if math.isfinite(scale) and scale > 1e-12:
            return center, scale
    return center, 1.0


def huber(r: Tensor, delta: float) -> Tensor:
    """Huber's loss with threshold ``delta``: ``r²/2`` inside, ``delta (|r| - delta/2)``
    outside."""
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def flat_predictions(out: Any, n: int) -> Tensor:
    """A model's ``(n, 1)`` or ``(n,)`` output as a vector of ``n`` predictions."""
    if not isinstance(out, Tensor) or tuple(out.shape) not in ((n, 1), (n,)):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise SlemError(
            f"model output has shape {shape}; a regression model must output (batch, 1) or "
            f"(batch,) predictions, here ({n}, 1) or ({n},)"
        )
    return out.reshape(n)


class RegressionTrainer(Trainer):
    """``mse``, ``l1``, ``huber``, meta-learned ``hwnet``, or a frozen HWnet (``apply``) on a
    regression task; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        model: nn.Module | None = None,
        methodology: Methodology | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        spec = method_spec(config)
        self.meta_training = spec.is_meta
        if not self.meta_training and spec.target is None and methodology is None:
            raise SlemError(
                f"method {config.method} needs the frozen methodology (load it with "
                "slem.methodology.load_methodology)"
            )
        if self.meta_training:
            if methodology is None:  # seeded here, so a run does not depend on what ran before
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(config.seed + 1_000_003)
                    h = config.hwnet
                    signed = h.signed
                    methodology = HyperWeightNet(
                        h.mode,
                        list(h.losses),
                        h.use_inputs,
                        h.hidden,
                        signed=signed,
                        weighted_loss=h.weighted_loss,
                    )
        elif methodology is not None and spec.target is not None:
            raise SlemError(f"method {config.method} takes no methodology (use hwnet or apply)")
        if methodology is not None and not isinstance(methodology, HyperWeightNet):
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
        if model is None:
            torch.manual_seed(config.seed)
            m = config.model
            model = build_model(
                task.features.input_shape, 1, m.arch, m.width, m.depth, m.dropout, m.activation
            )
        super().__init__(config, task, model, methodology, callbacks, device)
        self.best = {"val_score": None, "epoch": -1, "state": None}
        self.test_y_true = torch.as_tensor(
            task.test.y_true, dtype=torch.float32, device=self.device
        )
        self.meta_step: MetaStep | None = None
        self._f_model = functional(self.model)
        if self.meta_training:
            assert self.methodology is not None
            self.meta_step = MetaStep(
                config.meta,
                self.optimizer,
                dict(self.methodology.named_parameters()),
                self._check_finite,
                [self.observe_hypergradient],
            )
            self._f_hw = functional(self.methodology)

    # ------------------------------------------------------------------ setup

    def _check_task(self, config: TrainConfig, task: Task) -> None:
        spec = method_spec(config)
        if task.is_classification:
            raise target_error(replace(spec, target="regression"), task)
        if spec.target == "classification":
            raise target_error(spec, task)

    def _setup_targets(self) -> None:
        """Robust target scaling from the noisy training targets (see the module doc)."""
        self.y_center, self.y_scale = robust_scaling(self.task.train.y)

    def _tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        return (
            torch.as_tensor(split.X, dtype=torch.float32, device=self.device),
            torch.as_tensor(split.y, dtype=torch.float32, device=self.device).reshape(-1),
        )

    def _check_model_output(self) -> None:
        self.model.eval()
        n = min(2, len(self.train_x))
        with torch.no_grad():
            out = self.model(self.train_x[:n])
        flat_predictions(out, n)

    # ------------------------------------------------------------------ units

    @property
    def hwnet(self) -> HyperWeightNet | None:
        """The (meta-learned or frozen) HWnet, or None for the plain losses."""
        m = self.methodology
        return m if isinstance(m, HyperWeightNet) else None

    def standardize(self, y: Tensor) -> Tensor:
        """Targets in robust units: ``(y - median) / (1.4826 MAD)``."""
        return (y - self.y_center) / self.y_scale

    def to_original(self, z: Tensor) -> Tensor:
        return z * self.y_scale + self.y_center

    def predict(self, x: Tensor, model: nn.Module | None = None) -> Tensor:
        """Predictions in original target units, in eval mode, batched."""
        model = model or self.model
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(x), EVAL_BATCH):
                xb = x[i : i + EVAL_BATCH]
                out.append(flat_predictions(model(xb), len(xb)))
        if not out:
            return torch.zeros(0, device=self.device)
        return self.to_original(torch.cat(out))

    # ------------------------------------------------------------------ losses

    @property
    def in_warmup(self) -> bool:
        return self.meta_training and self.epoch < self.config.meta.warmup_epochs

    def _stats(self, x: Tensor | None) -> Tensor | None:
        net = self.hwnet
        if net is None or not net.use_inputs:
            return None
        if x is None:
            raise SlemError("this HWnet reads the inputs' statistics: pass the inputs x")
        return input_stats(x)

    def _hw_loss(self, residuals: Tensor, x: Tensor | None) -> Tensor:
        """The HWnet's per-sample losses with its output held constant (the real step:
        gradients reach the model only)."""
        net = self.hwnet
        assert net is not None
        with torch.no_grad():
            out = net(residuals.detach(), self._stats(x))
        return net.combine(residuals, out)

    def per_sample_losses(self, logits: Tensor, y: Tensor, x: Tensor | None = None) -> Tensor:
        """Per-sample training losses of standardized predictions ``logits`` (n,) against
        targets ``y`` in original units; ``x`` is needed by an HWnet that reads inputs."""
        pred, z = logits.reshape(-1), self.standardize(y)
        if self.hwnet is not None and not self.in_warmup:
            return self._hw_loss(pred - z, x)
        return self.spec.loss(pred, z, self)  # the method's loss (hwnet: its warm-up loss)

    # ------------------------------------------------------------------ steps

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        meta = self.config.meta
        if self.meta_training and not self.in_warmup and self.global_step % meta.interval == 0:
            return self._meta_step(x, y)
        start = time.perf_counter()
        self.model.train()
        pred = flat_predictions(self.model(x), len(x))
        return self._optimize(self.per_sample_losses(pred, y, x).mean(), start)

    def _inner_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: tuple[Any, ...]
    ) -> Tensor:
        """The HWnet-set loss of the batch as a function of the model's and the net's
        parameters; the net reads the detached residuals."""
        x, z, stats = batch
        net = self.hwnet
        assert net is not None
        r = flat_predictions(self._f_model(params, x), len(x)) - z
        return net.combine(r, self._f_hw(hyper, r.detach(), stats)).mean()

    def _outer_batch(self) -> dict[str, Tensor]:
        meta = self.config.meta
        out: dict[str, Tensor] = {}
        if "clean" in meta.objective:
            assert self.meta_x is not None and self.meta_y is not None
            take = torch.randperm(len(self.meta_y), generator=self.generator)[: meta.batch_size]
            take = take.to(self.device)
            out["x"], out["z"] = self.meta_x[take], self.standardize(self.meta_y[take])
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

    def _meta_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        step = self.meta_step
        assert step is not None
        self.model.train()
        z = self.standardize(y)
        problem = step.problem(self.inner_params(), self._inner_loss, self._outer_loss)
        result = step(problem, (x, z, self._stats(x)), self._outer_batch())
        # the real step, with the updated net
        pred = flat_predictions(self.forward(x), len(x))
        loss = self._hw_loss(pred - z, x).mean()
        self._check_finite(loss, "training loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._check_parameters()
        self.timings["meta"].append(time.perf_counter() - start)
        return {"loss": float(loss.detach()), "meta_loss": result.outer_loss}

    # ------------------------------------------------------------------ weights

    @property
    def weight_mode(self) -> bool:
        net = self.hwnet
        return net is not None and net.mode == "weight"

    def train_residuals(self) -> Tensor:
        """Every training sample's residual in robust units (eval mode)."""
        pred = self.predict(self.train_x)
        return self.standardize(pred) - self.standardize(self.train_y)

    def train_weights(self) -> np.ndarray:
        """In mode weight, the HWnet's raw weight (in (0, 1)) of every training sample."""
        net = self.hwnet
        if net is None or net.mode != "weight":
            raise SlemError("sample weights exist only for an HWnet in mode weight")
        w = net.curve(self.train_residuals(), self._stats(self.train_x))
        return w.cpu().numpy()

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, x: Tensor, y: Tensor, model: nn.Module | None = None
    ) -> tuple[float, float, float]:
        """(MSE, MAE) in original target units, and the mean ``r²/2`` in robust units (the
        ``mse`` training loss), in eval mode."""
        if not len(y):
            return math.nan, math.nan, math.nan
        pred = self.predict(x, model)
        err = pred - y
        r = err / self.y_scale
        return (
            float((err**2).mean()),
            float(err.abs().mean()),
            float((0.5 * r * r).mean()),
        )

    def validation_metrics(self) -> dict[str, float]:
        val_mse, val_mae, val_loss = self.evaluate(self.val_x, self.val_y)
        return {"val_loss": val_loss, "val_mse": val_mse, "val_mae": val_mae}

    def selection_score(self, row: dict[str, Any]) -> float:
        """The lowest validation MAE is best (see the module docstring)."""
        return -float(row["val_mae"])

    def has_sample_weights(self) -> bool:
        return self.weight_mode

    def finish(self) -> TrainResult:
        test_mse, test_mae, _ = self.evaluate(self.test_x, self.test_y_true)
        final = self.history[-1] if self.history else {}
        best_mse = best_mae = None
        if self.best["state"] is not None:
            best_model = copy.deepcopy(self.model)
            best_model.load_state_dict(self.best["state"])
            best_mse, best_mae, _ = self.evaluate(self.test_x, self.test_y_true, best_model)
        weights = self.train_weights() if self.weight_mode else None
        plain, meta = self.timings["plain"], self.timings["meta"]
        summary: dict[str, Any] = {
            "method": self.config.method,
            "dataset": self.task.name,
            "noise": str(self.task.noise) if self.task.noise else None,
            "imbalance": None,
            "seed": self.config.seed,
            "epochs": self.epoch,
            "steps": self.global_step,
            "seconds": round(self.elapsed, 2),
            "metric": "test_mse",
            "test_mse": test_mse,
            "test_mae": test_mae,
            "test_metric": test_mse,
            "test_mse_at_best_val": best_mse,
            "test_mae_at_best_val": best_mae,
            "val_mse": final.get("val_mse"),
            "val_mae": final.get("val_mae"),
            "selected_on": "val_mae",
            "best_val_mae": None if self.best["val_score"] is None else -self.best["val_score"],
            "best_epoch": self.best["epoch"],
            "weight_auc": self.weight_auc(weights) if weights is not None else None,
            "target_center": self.y_center,
            "target_scale": self.y_scale,
            "noise_rate_realized": self.task.train.noise_rate,
            "n_train": len(self.task.train),
            "n_meta": len(self.task.meta) if self.task.meta is not None else 0,
            "meta_step_time_ratio": (
                float(np.median(meta) / np.median(plain)) if meta and plain else None
            ),
            # classification keys, so code that reads them does not break
            "test_accuracy": None,
            "val_accuracy": None,
            "test_accuracy_at_best_val": None,
            **self.task.provenance(),  # where the test targets came from: clean or as given
        }
        if self.hwnet is not None:
            summary["hwnet_mode"] = self.hwnet.mode
        return TrainResult(self.history, summary, weights)

    # ------------------------------------------------------------------ state

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

    # ------------------------------------------------------------------ record

    def record(self, result: TrainResult) -> RunRecord:
        """Adds the learned loss (an HWnet's mixture or weight against the residual) and the
        predictions against the clean test targets."""
        record = super().record(result)
        if self.hwnet is not None:
            record.arrays.update(hwnet_arrays(self.hwnet, PLOT_RANGE))
            record.info.update(hwnet_mode=self.hwnet.mode, hwnet_losses=list(self.hwnet.losses))
        record.arrays.update(
            test_prediction=self.predict(self.test_x).cpu().numpy(),
            test_target=np.asarray(self.task.test.y_true),
        )
        record.info["title"] = f"{self.config.method} on {self.task.name}"
        return record
