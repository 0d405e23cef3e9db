"""What a run leaves besides its model, as plain data: :class:`RunRecord`.

Trainers fill a record (``Trainer.record``) and :func:`slem.train.train_run` returns it;
:mod:`slem.report` renders records (plots). The record holds no torch modules or trainers,
so ``report`` needs nothing from the layers below but data, and nothing below ``report``
imports it (the layers contract in ``pyproject.toml``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from slem.methodology import LossAdjusterNet
from slem.methodology.regression import HyperWeightNet, base_loss
from slem.train.diagnostics import plain_step_times, weight_auc
from slem.train.methods import method_spec

if TYPE_CHECKING:
    from slem.data.task import Task
    from slem.train.trainer import Trainer

#: points of the grids the learned curves are evaluated on
WEIGHT_GRID, MARGIN_GRID, RESIDUAL_GRID = 200, 201, 241


@dataclass
class TrainResult:
    """What :meth:`~slem.train.Trainer.fit` returns: the per-epoch ``history`` rows, the
    run's ``summary``, the learned weight of every training sample ``(n_train,)`` (None
    without sample weights) and method-specific ``extra`` data."""

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    train_weights: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """A finished run as plain data.

    Attributes:
        history: one row per epoch (per meta-iteration for a meta-training loop), as in
            ``metrics.jsonl``.
        summary: the run's results, as written to ``summary.json``.
        arrays: named NumPy arrays; each is present only when the run has it:

            - ``train_weights`` (n_train,): the learned weight of every training sample;
              ``noisy_mask`` (n_train,) bool: which of them carry a corrupted label;
              ``weight_curve_loss`` (200,) and ``weight_curve`` (n_groups, 200): the
              weighting net's weight against the loss, one row per class group;
            - ``lr_trace`` (steps,): the learned learning rate at every step; ``lr_stages``
              (k, 2) int: (global step, schedule stage) at each switch; ``lr_reference``
              (epochs * steps per epoch,): the cosine schedule from ``optim.lr``;
            - ``adjuster_margin`` (201,) and ``adjuster_curve`` (n_groups, 201, k): the loss
              adjuster's k hyperparameters against the logit margin;
            - ``transition_true`` and ``transition_estimated`` (C, C): the noise transition
              matrix (rows: clean class, columns: observed label) and its estimate;
            - ``hwnet_residual`` (241,) with ``hwnet_curve`` (241,) or (241, K),
              ``hwnet_loss`` (241,) and ``hwnet_l2`` (241,): a regression HWnet's weight
              or mixture coefficients, its loss, and ``r²/2``, against the residual
              (robust target units);
            - ``test_prediction`` and ``test_target`` (n_test,): regression predictions
              against clean test targets (original units);
            - ``val_iteration`` and ``val_metric`` (n_val,): few-shot meta-validation scores
              (accuracy in %, or MSE) and the meta steps they were taken at;
              ``sinusoid_*``: a sinusoid learner's adaptation to new tasks
              (:func:`slem.train.few_shot.adaptation_arrays`);
            - ``meta_loss`` (iterations,): the meta loss at every meta-training iteration.
        info: names and scalars the arrays need to be read: ``weighting_kind``,
            ``weight_heads`` (the weighting net's class-group heads), ``adjuster_names``,
            ``adjuster_family``, ``transition_label``, ``lr0``, ``steps_per_epoch``,
            ``lr_warmup_steps`` (steps before the first meta step), ``hwnet_mode``,
            ``hwnet_losses``, ``title``, ``meta_loss_label`` and ``meta_title`` (what the
            ``meta_loss`` curve is); of the task: ``val_labels``
            (what the validation labels are: ``clean``, ``noisy`` or ``as_given``, the
            user's own, possibly noisy), ``class_names``, ``class_counts`` (observed training
            labels) and ``class_groups`` (each class's size group).
    """

    history: list[dict[str, Any]]
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def run_summary(
    trainer: Trainer, metrics: dict[str, Any], weights: np.ndarray | None
) -> dict[str, Any]:
    """The summary of a finished run (``summary.json``): the method, task and seed, how long
    it ran, the objective's test and selection ``metrics``, the learned ``weights``' AUC for
    clean vs noisy samples, the meta step's time relative to a plain step, and where the
    test labels came from."""
    task = trainer.task
    known = weights is not None and task.corruption_known  # which labels are wrong
    auc = weight_auc(task.train.noisy_mask, weights) if known and weights is not None else None
    return {
        "method": trainer.config.method,
        "dataset": task.name,
        "noise": str(task.noise) if task.noise else None,
        "imbalance": task.imbalance,
        "seed": trainer.config.seed,
        "epochs": trainer.progress.epoch,
        "steps": trainer.progress.global_step,
        "seconds": round(trainer.progress.elapsed, 2),
        **metrics,
        "best_epoch": trainer.progress.best["epoch"],
        "weight_auc": auc,
        "noise_rate_realized": task.train.noise_rate,
        "n_train": len(task.train),
        "n_meta": len(task.meta) if task.meta is not None else 0,
        **step_time_ratios(trainer),
        **task.provenance(),  # where the test labels came from: clean or as given
    }


def step_time_ratios(trainer: Trainer) -> dict[str, float | None]:
    """``meta_step_time_ratio``: the median meta step over the median plain step;
    ``amortized_step_time_ratio``: what a training step costs on average once meta-learning
    runs, a meta step every ``k`` steps (``meta.interval``; ``schedule.interval`` for a learned
    schedule) and plain steps between them, ``(r + k - 1) / k`` (the fast mode's cost; None
    without meta steps)."""
    meta = trainer.progress.timings["meta"]
    if not meta:
        return {"meta_step_time_ratio": None, "amortized_step_time_ratio": None}
    ratio = float(np.median(meta) / np.median(plain_step_times(trainer)))
    config = trainer.config
    rate = method_spec(config).meta_step == "rate"
    k = config.schedule.interval if rate else config.meta.interval
    return {
        "meta_step_time_ratio": ratio,
        "amortized_step_time_ratio": (ratio + k - 1) / k,
    }


def trainer_record(trainer: Trainer, result: TrainResult) -> RunRecord:
    """The record every trainer starts from: history, summary, the named arrays of the
    objective (e.g. the confusion matrix) and, for a weighting methodology, the weights of the
    training samples and the learned weight curve."""
    record = RunRecord(list(result.history), dict(result.summary))
    title = f"{trainer.config.method} on {trainer.task.name}"
    arrays, info = trainer.objective.record(trainer.model, trainer.test_x, title)
    record.arrays.update(arrays)
    record.info.update(info)
    record.info.update(task_info(trainer.task))
    sw = trainer.sample_weights
    if sw is not None and result.train_weights is not None:
        observed = trainer.labels.eval_losses(trainer.model, trainer.train_x, trainer.train_y)
        n_groups = max(trainer.task.features.n_groups, 1)
        grid, curves, along = sw.weight_curve(observed, n_groups, WEIGHT_GRID)
        record.arrays.update(
            train_weights=np.asarray(result.train_weights),
            weight_curve_loss=grid.cpu().numpy(),
            weight_curve=curves.cpu().numpy(),
        )
        if trainer.task.corruption_known:  # which labels are wrong is known
            record.arrays["noisy_mask"] = np.asarray(trainer.task.train.noisy_mask, dtype=bool)
        record.info["weighting_kind"] = sw.net.kind
        record.info["weight_curve_input"] = along
        record.info["weight_heads"] = sw.net.n_groups
    return record


def task_info(task: Task) -> dict[str, Any]:
    """What the plots say about the task: ``val_labels`` (``noisy``: synthetic noise on
    train and val; ``as_given``: the user's own labels, possibly noisy; else ``clean``) and,
    with class labels, ``class_names``, ``class_counts`` (observed training labels) and
    ``class_groups`` (each class's size group)."""
    noisy = bool(task.val.noisy_mask.any()) or (task.noise is not None and task.noise.rate > 0)
    info: dict[str, Any] = {
        "val_labels": "noisy" if noisy else "as_given" if task.user_data else "clean"
    }
    if task.is_classification:
        f = task.features
        info.update(
            class_names=[str(c) for c in task.class_names],
            class_counts=list(f.class_counts),
            class_groups=list(f.class_groups),
        )
    return info


def lr_arrays(
    trace: Sequence[float], stages: Sequence[tuple[int, int]], lr0: float, total: int
) -> dict[str, np.ndarray]:
    """``lr_trace``, ``lr_stages`` and ``lr_reference`` (the cosine schedule from ``lr0``
    over ``total`` steps) of a learned schedule; empty when it never set a rate."""
    if not trace:
        return {}
    t = np.minimum(np.arange(total) / max(total, 1), 1.0)
    return {
        "lr_trace": np.asarray(trace, dtype=np.float64),
        "lr_stages": np.asarray(list(stages), dtype=np.int64).reshape(-1, 2),
        "lr_reference": lr0 * 0.5 * (1 + np.cos(np.pi * t)),
    }


def adjuster_arrays(adjuster: LossAdjusterNet) -> dict[str, np.ndarray]:
    """The adjuster's hyperparameters against the margin ``m``, one slice per class group.
    The loss fed with ``m`` is ``softplus(-m)``, the cross-entropy when one rival class holds
    the rest of the probability."""
    margin = torch.linspace(-10, 10, MARGIN_GRID)
    loss = F.softplus(-margin)
    device = next(adjuster.parameters()).device
    with torch.no_grad():
        curves = [
            adjuster(
                margin.to(device),
                loss.to(device),
                torch.full((len(margin),), g, dtype=torch.long, device=device),
            ).cpu()
            for g in range(adjuster.n_groups)
        ]
    return {"adjuster_margin": margin.numpy(), "adjuster_curve": torch.stack(curves).numpy()}


def hwnet_arrays(net: HyperWeightNet, residual_range: float) -> dict[str, np.ndarray]:
    """A regression HWnet's curve and loss on residuals in ``[-range, range]``."""
    device = next(net.parameters()).device
    grid = torch.linspace(-residual_range, residual_range, RESIDUAL_GRID, device=device)
    return {
        "hwnet_residual": grid.cpu().numpy(),
        "hwnet_curve": net.curve(grid).cpu().numpy(),
        "hwnet_loss": net.loss_curve(grid).cpu().numpy(),
        "hwnet_l2": base_loss("l2", grid).cpu().numpy(),
    }


def meta_loss_array(history: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """``meta_loss``: the meta loss of every meta-training iteration in ``history``."""
    return {"meta_loss": np.array([float(r["meta_loss"]) for r in history], dtype=np.float64)}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (``[]`` when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
