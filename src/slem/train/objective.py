"""The classification objective of a run: what the labels give the losses (class size groups,
class-balanced weights, the label prior), evaluation, and the validation metric that selects
the best epoch. Regression's counterpart lives in :mod:`slem.train.regression`."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.data.task import Split, Task
from slem.errors import SlemError
from slem.methodology.weighting import normalize_weights
from slem.train import losses as L
from slem.train.config import TrainConfig

EVAL_BATCH = 1024


class Classification:
    """Cross-entropy on ``n_classes`` logits; accuracy and balanced accuracy.

    Args:
        task: the task (its observed class counts and size groups).
        config: ``loss.cb_beta``, ``select_on`` and ``meta.normalize_weights``.
        device: where the label tensors live.
    """

    def __init__(self, task: Task, config: TrainConfig, device: torch.device) -> None:
        self.task, self.config, self.device = task, config, device
        self.n_classes = task.n_classes
        self.class_groups = torch.tensor(
            task.features.class_groups or [0] * task.n_classes, dtype=torch.long, device=device
        )
        counts = torch.tensor(task.features.class_counts, dtype=torch.float64)
        self.cb_weights = L.class_balanced_weights(counts, config.loss.cb_beta).to(device)
        prior = counts.clamp_min(1.0) / counts.clamp_min(1.0).sum()
        self.log_prior = prior.log().to(device, torch.float32)

    def tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        """A split's inputs (float32) and labels (int64) on the device."""
        return (
            torch.as_tensor(split.X, dtype=torch.float32, device=self.device),
            torch.as_tensor(split.y, dtype=torch.long, device=self.device),
        )

    def check_output(self, model: nn.Module, x: Tensor) -> None:
        """Refuse a model whose output on ``x[:2]`` is not ``(batch, n_classes)`` logits."""
        model.eval()
        with torch.no_grad():
            out = model(x[:2])
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
                hits.index_add_(0, yb, (logits.argmax(1) == yb).float())
        n = max(len(y), 1)
        support = torch.bincount(y, minlength=self.n_classes).float()
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
        self,
        model: nn.Module,
        best_state: dict[str, Tensor] | None,
        x: Tensor,
        y: Tensor,
        final: dict[str, Any],
    ) -> dict[str, Any]:
        """The summary's metric fields: test accuracy at the end and at the best validation
        epoch (``best_state``), the final validation accuracy and the selection metric."""
        _, test_acc, _ = self.evaluate(model, x, y)
        best_test = None
        if best_state is not None:
            best_model = copy.deepcopy(model)
            best_model.load_state_dict(best_state)
            best_test = self.evaluate(best_model, x, y)[1]
        return {
            "val_accuracy": final.get("val_accuracy"),
            "test_accuracy": test_acc,
            "selected_on": f"val_{self.select_on}",
            "test_accuracy_at_best_val": best_test,
        }
