"""What a run reports about itself besides its metrics: how well the learned weights separate
clean from noisy samples, and the time of a plain training step (the baseline of the meta
step's time ratio)."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

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

    if len(trainer.timings["plain"]) >= 3:
        return trainer.timings["plain"]
    model = copy.deepcopy(trainer.model).train()
    optimizer = make_optimizer(model.parameters(), trainer.config)
    optimizer.load_state_dict(trainer.optimizer.state_dict())
    pick = torch.Generator().manual_seed(trainer.config.seed)
    x, y, device = trainer.train_x, trainer.train_y, trainer.device
    times = []
    with torch.random.fork_rng(devices=[]):
        for _ in range(probes + 1):
            idx = torch.randint(0, len(y), (trainer.batch_size,), generator=pick).to(device)
            start = time.perf_counter()
            loss = trainer.objective.plain_loss(model(x[idx]), y[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return times[1:]  # the first is a warm-up (allocations)
