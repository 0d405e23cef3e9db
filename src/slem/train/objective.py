"""The objective of a run, chosen by the task's targets: :class:`Classification` (class
labels) or :class:`Regression` (real targets). Each says what the targets give the losses,
how the model's output is read, evaluation, the validation metric that selects the best
epoch, and the summary's metric fields. One :class:`~slem.train.Trainer` serves both."""

from __future__ import annotations

import copy
import functools
import math
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.data.task import Split, Task
from slem.errors import SlemError
from slem.methodology.weighting import normalize_weights
from slem.train import losses as L
from slem.train.config import TrainConfig
from slem.train.methods import Loss

if TYPE_CHECKING:
    from slem.train.trainer import Trainer

EVAL_BATCH = 1024


class Objective(Protocol):
    """What a trainer needs of its targets (see :class:`Classification`)."""

    n_outputs: int
    initial_best: float | None

    def tensors(self, split: Split) -> tuple[Tensor, Tensor]: ...
    def test_targets(self) -> Tensor: ...
    def check_output(self, model: nn.Module, x: Tensor) -> None: ...
    def training_losses(self, loss: Loss, out: Tensor, y: Tensor, trainer: Trainer) -> Tensor: ...
    def plain_loss(self, out: Tensor, y: Tensor) -> Tensor: ...
    def validation_metrics(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]: ...
    def selection_score(self, row: dict[str, Any]) -> float: ...
    def test_summary(
        self, model: nn.Module, best: dict[str, Any], x: Tensor, final: dict[str, Any]
    ) -> dict[str, Any]: ...
    def record(
        self, model: nn.Module, x: Tensor, title: str
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...
    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float, float]: ...
    def target_scaling(self) -> tuple[float, float]: ...


def objective_for(task: Task, config: TrainConfig, device: torch.device) -> Objective:
    """:class:`Classification` for a task with class labels, else :class:`Regression`."""
    if task.is_classification:
        return Classification(task, config, device)
    return Regression(task, device)


def probe(model: nn.Module, x: Tensor) -> Any:
    """``model``'s output on ``x`` in eval mode, without gradients.

    Raises:
        SlemError: the model fails on such a batch (one line with its error).
    """
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    except Exception as exc:
        shape = tuple(x.shape)
        raise SlemError(
            f"the model failed on a batch of inputs of shape {shape}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; make its forward take inputs of "
            f"shape (batch, {', '.join(map(str, shape[1:]))})"
        ) from None


def best_model(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A copy of ``model`` with the best epoch's ``state``."""
    best = copy.deepcopy(model)
    best.load_state_dict(state)
    return best


class Classification:
    """Cross-entropy on ``n_classes`` logits; accuracy and balanced accuracy.

    Args:
        task: the task (its observed class counts and size groups).
        config: ``loss.cb_beta``, ``select_on`` and ``meta.normalize_weights``.
        device: where the label tensors live.
    """

    #: the best validation score before any epoch
    initial_best: float | None = -1.0

    def __init__(self, task: Task, config: TrainConfig, device: torch.device) -> None:
        self.task, self.config, self.device = task, config, device
        self.n_classes = self.n_outputs = task.n_classes
        self.class_groups = torch.tensor(
            task.features.class_groups or [0] * task.n_classes, dtype=torch.long, device=device
        )
        counts = torch.tensor(task.features.class_counts, dtype=torch.float64)
        self._counts = counts
        prior = counts.clamp_min(1.0) / counts.clamp_min(1.0).sum()
        self.log_prior = prior.log().to(device, torch.get_default_dtype())

    @functools.cached_property
    def cb_weights(self) -> Tensor:
        """The class-balanced loss's per-class weights (``loss.cb_beta``; method
        class_balanced, the one that reads them)."""
        return L.class_balanced_weights(self._counts, self.config.loss.cb_beta).to(self.device)

    def __repr__(self) -> str:
        return f"Classification({self.n_classes} classes, select on val {self.select_on})"

    def target_scaling(self) -> tuple[float, float]:
        """Logits need no rescaling: ``(0, 1)``."""
        return 0.0, 1.0

    def tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        """A split's inputs (in torch's default dtype: float32 unless set) and labels (int64)
        on the device."""
        return (
            torch.as_tensor(split.X, dtype=torch.get_default_dtype(), device=self.device),
            torch.as_tensor(split.y, dtype=torch.long, device=self.device),
        )

    def test_targets(self) -> Tensor:
        """The test split's labels."""
        return self.tensors(self.task.test)[1]

    def training_losses(self, loss: Loss, out: Tensor, y: Tensor, trainer: Trainer) -> Tensor:
        """``loss`` of the logits ``out`` ``(n, C)`` against labels ``y``."""
        return loss(out, y, trainer)

    def plain_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """The plain (ERM) per-sample loss: cross-entropy."""
        return L.cross_entropy(out, y)

    def check_output(self, model: nn.Module, x: Tensor) -> None:
        """Refuse a model whose output on ``x[:2]`` is not ``(batch, n_classes)`` logits."""
        out = probe(model, x[:2])
        if not isinstance(out, Tensor) or out.shape != (min(2, len(x)), self.n_classes):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise SlemError(
                f"model output has shape {shape}; expected (batch, {self.n_classes}) "
                f"logits for the {self.n_classes} classes of '{self.task.name}'"
            )

    @property
    def labels_imbalanced(self) -> bool:
        """The observed labels are imbalanced when the largest class is 3x the smallest."""
        counts = [c for c in self.task.features.class_counts if c > 0]
        return bool(counts) and max(counts) >= 3 * min(counts)

    @property
    def select_on(self) -> str:
        """The validation metric that picks the best epoch (see ``TrainConfig.select_on``)."""
        if self.config.select_on != "auto":
            return self.config.select_on
        return "balanced_accuracy" if self.labels_imbalanced else "accuracy"

    @property
    def normalization(self) -> str:
        """``meta.normalize_weights`` with ``auto`` resolved: per label on balanced labels
        (which keeps a lost class in the step), per batch under imbalance."""
        mode = self.config.meta.normalize_weights
        if mode != "auto":
            return mode
        return "batch" if self.labels_imbalanced else "class"

    def normalized(self, w: Tensor, y: Tensor) -> Tensor:
        """MW-Net's normalization of sample weights ``w`` ``(n,)`` to mean 1 (``batch``), or
        to mean 1 within each given label ``y`` (``class``: a loss-only weight cannot single
        out the clean samples of a class the model has lost, all of whose losses are high;
        this keeps that class in the step)."""
        return normalize_weights(w, self.normalization, y, self.n_classes)

    def eval_losses(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample cross-entropy ``(n,)`` in eval mode, batched."""
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(y), EVAL_BATCH):
                out.append(L.cross_entropy(model(x[i : i + EVAL_BATCH]), y[i : i + EVAL_BATCH]))
        return torch.cat(out)

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float, float]:
        """(mean cross-entropy, accuracy, balanced accuracy) in eval mode; balanced accuracy is
        the mean recall over the classes present in ``y``."""
        model.eval()
        total_loss = 0.0
        hits = torch.zeros(self.n_classes, device=y.device)
        with torch.no_grad():
            for i in range(0, len(y), EVAL_BATCH):
                logits = model(x[i : i + EVAL_BATCH])
                yb = y[i : i + EVAL_BATCH]
                total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                hits.index_add_(0, yb, (logits.argmax(1) == yb).to(hits.dtype))
        n = max(len(y), 1)
        support = torch.bincount(y, minlength=self.n_classes).to(hits.dtype)
        present = support > 0
        balanced = float((hits[present] / support[present]).mean()) if present.any() else 0.0
        return total_loss / n, float(hits.sum()) / n, balanced

    def validation_metrics(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        """What each epoch logs about the validation split."""
        val_loss, val_acc, val_bacc = self.evaluate(model, x, y)
        return {"val_loss": val_loss, "val_accuracy": val_acc, "val_balanced_accuracy": val_bacc}

    def selection_score(self, row: dict[str, Any]) -> float:
        """Higher is better: the validation metric that picks the best epoch."""
        key = "val_balanced_accuracy" if self.select_on == "balanced_accuracy" else "val_accuracy"
        return float(row[key])

    def test_summary(
        self, model: nn.Module, best: dict[str, Any], x: Tensor, final: dict[str, Any]
    ) -> dict[str, Any]:
        """The summary's metric fields: test accuracy at the end and at the best validation
        epoch (``best``: its ``state`` and ``val_score``), the final validation accuracy and
        the selection metric."""
        y = self.test_targets()
        _, test_acc, _ = self.evaluate(model, x, y)
        at_best = None
        if best["state"] is not None:
            at_best = self.evaluate(best_model(model, best["state"]), x, y)[1]
        return {
            "val_accuracy": final.get("val_accuracy"),
            "test_accuracy": test_acc,
            "selected_on": f"val_{self.select_on}",
            "best_val_score": best["val_score"],
            "test_accuracy_at_best_val": at_best,
        }

    def record(
        self, model: nn.Module, x: Tensor, title: str
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and info the run record adds (none for classification)."""
        return {}, {}


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


def flat_predictions(out: Any, n: int) -> Tensor:
    """A model's ``(n, 1)`` or ``(n,)`` output as a vector of ``n`` predictions."""
    if not isinstance(out, Tensor) or tuple(out.shape) not in ((n, 1), (n,)):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise SlemError(
            f"model output has shape {shape}; a regression model must output (batch, 1) or "
            f"(batch,) predictions, here ({n}, 1) or ({n},)"
        )
    return out.reshape(n)


class Regression:
    """Real targets with noise, in robust target units.

    The model predicts *standardized* targets ``z = (y - c) / s`` with ``c`` the median and
    ``s = 1.4826 ⋅ MAD`` of the (noisy) training targets (:func:`robust_scaling`). Unlike the
    mean and standard deviation, these are barely moved by a minority of gross outliers, so a
    residual of 3 means "three typical deviations" on every task. Validation MSE and MAE are
    against the *noisy* validation targets, test MSE and MAE against the clean test targets,
    in original units. The best epoch has the lowest validation MAE: the validation targets
    carry the same outliers as the training targets, and the squared error of a few outliers
    would dominate a validation MSE; the absolute error mostly measures the fit to the bulk.
    """

    n_outputs = 1
    #: scores are negative MAEs: no epoch yet is None
    initial_best: float | None = None

    def __init__(self, task: Task, device: torch.device) -> None:
        self.task, self.device = task, device
        self.y_center, self.y_scale = robust_scaling(task.train.y)

    def __repr__(self) -> str:
        return (
            f"Regression(center {self.y_center:.4g}, scale {self.y_scale:.4g}, select on val mae)"
        )

    def target_scaling(self) -> tuple[float, float]:
        """``(center, scale)``: the model predicts ``(y - center) / scale``."""
        return self.y_center, self.y_scale

    def tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        """A split's inputs and targets (float32; targets as a vector) on the device."""
        return (
            torch.as_tensor(split.X, dtype=torch.get_default_dtype(), device=self.device),
            torch.as_tensor(split.y, dtype=torch.get_default_dtype(), device=self.device).reshape(
                -1
            ),
        )

    def test_targets(self) -> Tensor:
        """The test split's clean targets."""
        return torch.as_tensor(
            self.task.test.y_true, dtype=torch.get_default_dtype(), device=self.device
        )

    def check_output(self, model: nn.Module, x: Tensor) -> None:
        """Refuse a model whose output on ``x[:2]`` is not ``(batch, 1)`` or ``(batch,)``."""
        n = min(2, len(x))
        flat_predictions(probe(model, x[:n]), n)

    def standardize(self, y: Tensor) -> Tensor:
        """Targets in robust units: ``(y - median) / (1.4826 MAD)``."""
        return (y - self.y_center) / self.y_scale

    def to_original(self, z: Tensor) -> Tensor:
        return z * self.y_scale + self.y_center

    def training_losses(self, loss: Loss, out: Tensor, y: Tensor, trainer: Trainer) -> Tensor:
        """``loss`` of the standardized predictions ``out`` against ``y`` in robust units."""
        return loss(flat_predictions(out, len(y)), self.standardize(y), trainer)

    def plain_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """The plain per-sample loss: ``r²/2`` in robust units."""
        r = flat_predictions(out, len(y)) - self.standardize(y)
        return 0.5 * r * r

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        """Predictions in original target units, in eval mode, batched."""
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(x), EVAL_BATCH):
                xb = x[i : i + EVAL_BATCH]
                out.append(flat_predictions(model(xb), len(xb)))
        if not out:
            return torch.zeros(0, device=self.device)
        return self.to_original(torch.cat(out))

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float, float]:
        """(MSE, MAE) in original target units, and the mean ``r²/2`` in robust units (the
        ``mse`` training loss), in eval mode."""
        if not len(y):
            return math.nan, math.nan, math.nan
        err = self.predict(model, x) - y
        r = err / self.y_scale
        return float((err**2).mean()), float(err.abs().mean()), float((0.5 * r * r).mean())

    def validation_metrics(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        val_mse, val_mae, val_loss = self.evaluate(model, x, y)
        return {"val_loss": val_loss, "val_mse": val_mse, "val_mae": val_mae}

    def selection_score(self, row: dict[str, Any]) -> float:
        """The lowest validation MAE is best."""
        return -float(row["val_mae"])

    def test_summary(
        self, model: nn.Module, best: dict[str, Any], x: Tensor, final: dict[str, Any]
    ) -> dict[str, Any]:
        """The summary's metric fields: test MSE and MAE (clean targets, original units) at
        the end and at the best validation epoch, the final validation MSE and MAE, the
        robust scaling; the classification keys are None."""
        y = self.test_targets()
        test_mse, test_mae, _ = self.evaluate(model, x, y)
        best_mse = best_mae = None
        if best["state"] is not None:
            best_mse, best_mae, _ = self.evaluate(best_model(model, best["state"]), x, y)
        return {
            "imbalance": None,
            "metric": "test_mse",
            "test_mse": test_mse,
            "test_mae": test_mae,
            "test_metric": test_mse,
            "test_mse_at_best_val": best_mse,
            "test_mae_at_best_val": best_mae,
            "val_mse": final.get("val_mse"),
            "val_mae": final.get("val_mae"),
            "selected_on": "val_mae",
            "best_val_mae": None if best["val_score"] is None else -best["val_score"],
            "target_center": self.y_center,
            "target_scale": self.y_scale,
            "test_accuracy": None,  # classification keys, so code that reads them still works
            "val_accuracy": None,
            "test_accuracy_at_best_val": None,
        }

    def record(
        self, model: nn.Module, x: Tensor, title: str
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The predictions against the clean test targets, and the plots' ``title``."""
        arrays = {
            "test_prediction": self.predict(model, x).cpu().numpy(),
            "test_target": np.asarray(self.task.test.y_true),
        }
        return arrays, {"title": title}
