"""What a sample-weighting rule observes of its task: inputs that mean the same on every task.

MW-Net (Shu et al. 2019) feeds its net the raw per-sample loss, whose scale differs between
datasets (it grows with ``log C`` and with the model's fit), so a rule meta-learned on one task
reads a different curve on another. The SLeM paper (``shared/seeds/000``, eq. 4) asks for
``h(T)``: a rule that sees the *task*. The inputs below are scale-free or task-level, so one
rule can be meta-learned over a family of tasks and applied to a new one:

========================  =====================================================================
``loss``                  the raw loss (MW-Net's input); kept for per-task rules
``loss_ratio``            the loss over the batch's mean loss: "harder than usual", on any
                          dataset and at any point of training
``loss_rank``             the loss's rank within the batch, in ``[0, 1]``: the same, bounded
                          (robust to a few huge losses)
``history``               the mean of the sample's ``loss_ratio`` over every visit so far,
                          this one included (area under the margin, Pleiss et al. 2020, with the
                          loss): under memorization a mislabeled sample's current loss falls,
                          its history does not
``progress``              the fraction of training done, in ``[0, 1]``: early in training a high
                          loss means less than late
``noise_estimate``        the task's estimated noise rate: the weight of the high-loss component
                          of a two-component Gaussian mixture fitted to the samples' histories
                          (as DivideMix, Li et al. 2020, splits clean from noisy) at the start
                          of every epoch; 0 in the first epoch
``log_classes``           ``log C``, the number of classes (chance-level loss)
========================  =====================================================================

The class-size group (CMW-Net's task feature) is not an input column: it selects the output
head (:class:`~slem.methodology.CMWNet`). Under the ``monotone`` option the weight is
non-increasing in every loss-like input (``loss``, ``loss_ratio``, ``loss_rank``, ``history``)
and free in the task-level ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class WeightInput:
    """One input column of a weighting rule: its name, whether it is loss-like (the
    ``monotone`` option makes the weight non-increasing in it), and why it is there."""

    name: str
    loss_like: bool
    why: str


WEIGHT_INPUTS: dict[str, WeightInput] = {
    i.name: i
    for i in (
        WeightInput("loss", True, "the raw per-sample loss (MW-Net); its scale is the task's"),
        WeightInput("loss_ratio", True, "the loss over the batch mean: scale-free"),
        WeightInput("loss_rank", True, "the loss's rank in the batch, in [0, 1]: bounded"),
        WeightInput("history", True, "the sample's mean loss_ratio over its visits so far"),
        WeightInput("progress", False, "the fraction of training done, in [0, 1]"),
        WeightInput("noise_estimate", False, "the task's estimated noise rate, in [0, 1]"),
        WeightInput("log_classes", False, "log of the number of classes"),
    )
}

#: the inputs that need the samples' loss histories (a :class:`TaskObserver`)
STATEFUL = ("history", "noise_estimate")


def check_inputs(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, checked.

    Raises:
        ValueError: empty, repeated, or an unknown name (the message lists the known ones).
    """
    names = tuple(names)
    if not names:
        raise ValueError("a weighting rule needs at least one input, e.g. [loss_ratio, history]")
    for name in names:
        if name not in WEIGHT_INPUTS:
            raise ValueError(f"unknown weighting input {name!r}; known: {', '.join(WEIGHT_INPUTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"weighting inputs {list(names)} name one input twice")
    return names


def loss_like_mask(names: Sequence[str]) -> Tensor:
    """A bool tensor ``(len(names),)``: which inputs the monotone option constrains."""
    return torch.tensor([WEIGHT_INPUTS[n].loss_like for n in names], dtype=torch.bool)


def batch_ratio(losses: Tensor) -> Tensor:
    """``losses / mean(losses)`` (shape ``(n,)``), 1 for a batch of zero losses."""
    return losses / losses.mean().clamp_min(1e-8)


class TaskObserver:
    """The task-level state behind the stateful inputs of one training run: every training
    sample's loss history, the training clock, the noise-rate estimate.

    Args:
        inputs: the rule's input names (:data:`WEIGHT_INPUTS`).
        n_train: training samples (indices ``0..n_train-1``).
        n_classes: classes of the task.
    """

    def __init__(self, inputs: Sequence[str], n_train: int, n_classes: int) -> None:
        self.inputs = check_inputs(inputs)
        self.n_classes = n_classes
        self.ratio_sum = torch.zeros(n_train, dtype=torch.float64)
        self.visits = torch.zeros(n_train, dtype=torch.long)
        self.noise = 0.0

    @property
    def stateful(self) -> bool:
        return any(n in STATEFUL for n in self.inputs)

    def features(self, losses: Tensor, idx: Tensor | None, progress: float = 0.0) -> Tensor:
        """The input matrix ``(n, len(inputs))`` of a batch's per-sample ``losses`` (shape
        ``(n,)``, detached here) of training samples ``idx`` (shape ``(n,)``; None for samples
        outside the training set, whose history is their current ratio); ``progress``: the
        fraction of training done. Pure: the state moves in :meth:`observe` and
        :meth:`start_epoch` only."""
        if self.inputs == ("loss",):  # MW-Net's input, as it always read it
            return losses.detach()[:, None]
        losses = losses.detach()
        n = len(losses)
        ratio = batch_ratio(losses)
        columns = []
        for name in self.inputs:
            if name == "loss":
                col = losses
            elif name == "loss_ratio":
                col = ratio
            elif name == "loss_rank":
                col = torch.argsort(torch.argsort(losses)).to(losses.dtype) / max(n - 1, 1)
            elif name == "history":
                col = self.history(ratio, idx)
            elif name == "log_classes":
                col = losses.new_full((n,), math.log(self.n_classes))
            else:
                value = progress if name == "progress" else self.noise
                col = losses.new_full((n,), value)
            columns.append(col)
        return torch.stack(columns, dim=1)

    def _indices(self, idx: Tensor) -> Tensor:
        i = idx.cpu()
        if len(i) and (int(i.min()) < 0 or int(i.max()) >= len(self.visits)):
            raise ValueError(
                f"sample indices must lie in 0..{len(self.visits) - 1} (n_train "
                f"{len(self.visits)}), got {int(i.min())}..{int(i.max())}"
            )
        return i

    def history(self, ratio: Tensor, idx: Tensor | None) -> Tensor:
        """Mean loss ratio over the earlier visits and this one (shape ``(n,)``)."""
        if idx is None:
            return ratio
        i = self._indices(idx)
        past = self.ratio_sum[i].to(ratio)
        visits = self.visits[i].to(ratio)
        return (past + ratio) / (visits + 1)

    def observe(self, losses: Tensor, idx: Tensor) -> None:
        """After a real step on training samples ``idx`` (shape ``(n,)``) with per-sample
        ``losses`` (shape ``(n,)``): their loss ratios join the histories."""
        if not self.stateful:
            return
        i = self._indices(idx)
        self.ratio_sum.index_add_(0, i, batch_ratio(losses.detach()).cpu().double())
        self.visits.index_add_(0, i, torch.ones_like(i))

    def start_epoch(self) -> None:
        """Re-estimate the noise rate from the histories of the samples seen so far."""
        if "noise_estimate" in self.inputs:
            self.noise = estimate_noise_rate(self.mean_histories())

    def mean_histories(self) -> np.ndarray:
        """The mean loss ratio of every visited sample (shape ``(visited,)``)."""
        seen = self.visits > 0
        return (self.ratio_sum[seen] / self.visits[seen]).numpy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "ratio_sum": self.ratio_sum.clone(),
            "visits": self.visits.clone(),
            "noise": self.noise,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratio_sum = state["ratio_sum"].clone()
        self.visits = state["visits"].clone()
        self.noise = float(state["noise"])


def estimate_noise_rate(histories: np.ndarray) -> float:
    """The weight of the higher-mean component of a two-component Gaussian mixture fitted to
    the samples' mean loss ratios (shape ``(n,)``), in ``[0, 1]``; 0 with fewer than 20
    samples or no spread. DivideMix (Li et al., ICLR 2020) splits clean from noisy samples
    this way (on the loss; here on its scale-free history)."""
    from sklearn.mixture import GaussianMixture

    h = np.log(np.asarray(histories, dtype=np.float64) + 1e-3)[:, None]
    if len(h) < 20 or float(h.std()) < 1e-6:
        return 0.0
    gmm = GaussianMixture(2, random_state=0, max_iter=100, reg_covar=1e-4).fit(h)
    high = int(np.argmax(gmm.means_[:, 0]))
    return float(gmm.weights_[high])
