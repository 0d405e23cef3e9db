"""Forward loss correction with a fixed transition matrix (Patrini et al., CVPR 2017).

The baselines for the meta-learned transition network. The noisy-label loss scores
``p(x) T`` instead of ``p(x)``, so the classifier ``p`` can stay clean while fitting noisy
labels; test-time prediction uses ``p`` itself. ``T`` is either

* ``anchor``: estimated from anchor points after ``loss.forward_warmup_epochs`` of plain CE:
  for each class ``i`` the training sample whose ``p_i(x)`` sits at the ``anchor_quantile``
  (the 97th percentile, robust to overconfident outliers) is taken as surely of class ``i``,
  and row ``i`` of ``T`` is the warm model's prediction there; training then continues with the
  corrected loss (continuing rather than restarting halves the cost; Patrini et al. retrain);
* ``true``: the matrix the labels were corrupted with, an oracle. Under instance-dependent
  noise it is the class-conditional average of the per-sample matrices: the generator fixes,
  for each sample, only the row of its own clean class, so the per-sample matrix ``T(x)``
  that forward correction needs is not known even to the oracle.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from slem.errors import SlemError
from slem.methodology import forward_corrected
from slem.train.objective import EVAL_BATCH
from slem.train.record import RunRecord
from slem.train.trainer import Trainer, TrainResult


def estimate_transition(probs: Tensor, quantile: float) -> Tensor:
    """Anchor-point estimate of ``T`` from predicted noisy-label probabilities ``(n, C)``."""
    n, c = probs.shape
    rows = []
    for i in range(c):
        col = probs[:, i]
        k = min(n - 1, round(quantile * (n - 1)))
        anchor = torch.argsort(col)[k]
        rows.append(probs[anchor])
    t = torch.stack(rows)
    return t / t.sum(1, keepdim=True).clamp_min(1e-12)


def corrected_nll(logits: Tensor, y: Tensor, transition: Tensor) -> Tensor:
    """``-log (softmax(logits) T)_y`` per sample."""
    noisy = forward_corrected(F.softmax(logits, dim=1), transition)
    return -noisy.gather(1, y[:, None]).squeeze(1).clamp_min(1e-7).log()


class ForwardTrainer(Trainer):
    """Method ``forward``: CE, then (or, for the oracle, from the start) forward correction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config.loss
        self.transition: Tensor | None = None
        if c.forward_transition == "true":
            if self.task.transition is None:
                raise SlemError("forward_transition true needs a task with known label noise")
            self.transition = torch.as_tensor(
                self.task.transition, dtype=torch.get_default_dtype(), device=self.device
            )

    @property
    def correcting(self) -> bool:
        return self.transition is not None

    def on_epoch_start(self) -> None:
        c = self.config.loss
        if c.forward_transition == "anchor" and self.progress.epoch == c.forward_warmup_epochs:
            self.transition = estimate_transition(self.train_probabilities(), c.anchor_quantile)

    def train_probabilities(self) -> Tensor:
        self.model.eval()
        with torch.no_grad():
            return torch.cat(
                [
                    F.softmax(self.model(self.train_x[i : i + EVAL_BATCH]), dim=1)
                    for i in range(0, len(self.train_x), EVAL_BATCH)
                ]
            )

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        self.model.train()
        logits = self.model(x)
        if self.transition is not None:
            loss = corrected_nll(logits, y, self.transition).mean()
        else:
            loss = F.cross_entropy(logits, y)
        return self._optimize(loss, start)

    def finish(self) -> TrainResult:
        result = super().finish()
        if self.transition is not None and self.task.transition is not None:
            true = np.asarray(self.task.transition)
            est = self.transition.cpu().numpy()
            result.summary["transition_error"] = float(np.abs(est - true).sum(1).mean() / 2)
            result.extra["transition"] = est.tolist()
        return result

    def record(self, result: TrainResult) -> RunRecord:
        record = super().record(result)
        if self.transition is not None and self.task.transition is not None:
            record.arrays.update(
                transition_true=np.asarray(self.task.transition),
                transition_estimated=self.transition.cpu().numpy(),
            )
            record.info["transition_label"] = "estimated (anchors)"
        return record

    def state(self) -> dict[str, Any]:
        return {**super().state(), "transition": self.transition}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        t = state.get("transition")
        if self.config.loss.forward_transition == "anchor":
            self.transition = t.to(self.device) if t is not None else None
