"""What a run reports about itself besides its metrics: how well the learned weights separate
clean from noisy samples, what a loss adjuster and a transition net learned, and the time of a
plain training step (the baseline of the meta step's time ratio)."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from slem.methodology import LossAdjusterNet, TransitionNet
from slem.train import losses as L
from slem.train.objective import EVAL_BATCH

if TYPE_CHECKING:
    from slem.train.trainer import Trainer


def weight_auc(noisy: np.ndarray, weights: np.ndarray) -> float | None:
    """ROC AUC of ``weights`` ``(n,)`` for telling truly clean (positive) from truly noisy
    samples (``noisy`` ``(n,)`` bool); None when all or none are noisy."""
    if noisy.all() or not noisy.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(~noisy, weights))


def weight_metrics(weights: np.ndarray, noisy: np.ndarray) -> dict[str, float | None]:
    """What each epoch logs about the learned weights ``(n,)``: their AUC for telling clean
    from noisy (``noisy`` ``(n,)`` bool) samples, and their means on each."""
    return {
        "weight_auc": weight_auc(noisy, weights),
        "weight_mean_clean": float(weights[~noisy].mean()) if (~noisy).any() else None,
        "weight_mean_noisy": float(weights[noisy].mean()) if noisy.any() else None,
    }


def plain_step_times(trainer: Trainer, probes: int = 5) -> list[float]:
    """Seconds of plain (ERM) training steps: those the run took (warm-up, steps between
    meta steps), or, when it took fewer than 3 (``meta.warmup_epochs: 0``,
    ``meta.interval: 1``), ``probes`` ERM steps timed now on a copy of the model and
    optimizer (the run's model, optimizer and random state are untouched)."""
    from slem.train.optimizers import make_optimizer

    if len(trainer.progress.timings["plain"]) >= 3:
        return trainer.progress.timings["plain"]
    model = copy.deepcopy(trainer.model).train()
    optimizer = make_optimizer(model.parameters(), trainer.config)
    optimizer.load_state_dict(trainer.optimizer.state_dict())
    pick = torch.Generator().manual_seed(trainer.config.seed)
    x, y, device = trainer.train_x, trainer.train_y, trainer.device
    times = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(probes + 1):
            idx = torch.randint(0, len(y), (trainer.plan.batch_size,), generator=pick).to(device)
            start = time.perf_counter()
            loss = trainer.objective.plain_loss(model(x[idx]), y[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return times[1:]  # the first is a warm-up (allocations)


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{j != y} z_j``: positive when the model agrees with the label."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.max(1).values


def adjuster_values(
    adjuster: LossAdjusterNet, model: nn.Module, x: Tensor, y: Tensor, class_groups: Tensor
) -> np.ndarray:
    """The adjuster's loss hyperparameters ``(n, k)`` for every sample of ``(x, y)`` (``k``
    per family: GCE's q, SCE's alpha and beta), from the model's margins and losses in eval
    mode; ``class_groups`` ``(C,)``: each class's size group."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(y), EVAL_BATCH):
            xb, yb = x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
            logits = model(xb)
            ce = L.cross_entropy(logits, yb)
            out.append(adjuster(logit_margin(logits, yb), ce, class_groups[yb]))
    return torch.cat(out).cpu().numpy()


def mean_transition(net: TransitionNet, x: Tensor, y_true: np.ndarray) -> np.ndarray:
    """Row ``i``: the predicted ``T(x)[i]`` averaged over the samples of clean class ``i``
    (``y_true`` ``(n,)``), ``(C, C)``, comparable with a task's true matrix."""
    c = net.n_classes
    total = torch.zeros(c, c, device=x.device)
    labels = torch.as_tensor(y_true, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for i in range(0, len(labels), EVAL_BATCH):
            yb = labels[i : i + EVAL_BATCH]
            rows = net(x[i : i + EVAL_BATCH])[torch.arange(len(yb)), yb]
            total.index_add_(0, yb, rows)
    counts = torch.bincount(labels, minlength=c).clamp_min(1)[:, None]
    return (total / counts).cpu().numpy()


def row_error(net: TransitionNet, x: Tensor, y_true: np.ndarray, rows: np.ndarray) -> float:
    """Instance-dependent noise: the mean total-variation distance between the predicted
    row ``T(x_k)[clean class of k]`` and the distribution ``rows[k]`` sample k's label was
    drawn from."""
    target = torch.as_tensor(rows, dtype=torch.float32, device=x.device)
    labels = torch.as_tensor(y_true, dtype=torch.long, device=x.device)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(labels), EVAL_BATCH):
            yb = labels[i : i + EVAL_BATCH]
            pred = net(x[i : i + EVAL_BATCH])[torch.arange(len(yb)), yb]
            total += float((pred - target[i : i + EVAL_BATCH]).abs().sum() / 2)
    return total / max(len(labels), 1)
