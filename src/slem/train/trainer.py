"""The training loops: :class:`Trainer` and :class:`MetaTrainer`.

``Trainer`` trains a model on a :class:`~slem.data.Task` with ERM, a robust-loss baseline
(GCE, SCE, bootstrapping, class-balanced), fine-tuning on the meta set, SGD / Adam / RMSprop,
or a *frozen* weighting methodology or learned optimizer (meta-test: no meta set, about the
cost of plain training). Learned schedules run in :mod:`slem.train.schedule`, a subclass.
``MetaTrainer`` meta-learns the weighting methodology (MW-Net, CMW-Net, CMW-Net-SL) with the
bilevel engine: ERM warm-up epochs, then a meta step every ``meta.interval`` steps whose
objective is a clean meta set, DAC-MR consistency on unlabeled samples, both, or samples the
model selects as clean (lowest loss per class).

Both are deterministic given the seed and resume exactly from a checkpoint: each epoch's
sample order comes from ``(seed, epoch)`` and every random state is saved.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import (
    SGD,
    BilevelProblem,
    Hypergrad,
    InnerOptimizer,
    PerSample,
    WeightedProblem,
    from_torch,
    functional,
    hypergrad,
    replay_randomness,
    same_randomness,
)
from slem.bilevel.fast import inner_value, weight_input
from slem.bilevel.problem import as_params
from slem.data.augment import augment
from slem.data.task import Split, Task
from slem.errors import SlemError
from slem.methodology import LearnedOptimizer, LSTMOptimizerNet, Methodology, build_weighting
from slem.methodology.weighting import CMWNet, MWNet, normalize_weights
from slem.train import losses as L
from slem.train.callbacks import Callback
from slem.train.config import MetaConfig, TrainConfig
from slem.train.methods import build_trainer, method_spec, target_error
from slem.train.models import build_model
from slem.train.record import RunRecord, trainer_record

EVAL_BATCH = 1024


class TrainingStopped(Exception):
    """Training stopped early in a consistent state (interrupt or kill); resume to go on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ZeroHypergradient(SlemError):
    """Every meta step of an epoch had an exactly zero hypergradient: nothing is learned."""


class NonFiniteLoss(SlemError):
    """A loss or hypergradient became NaN or infinite; the last finite state is kept."""


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    train_weights: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SlemError("device cuda requested but torch sees no CUDA device; use device cpu")
    return torch.device(name)


class Stoppable(Protocol):
    """Anything a Ctrl-C handler can ask to stop after its current step."""

    _stop: str | None

    def request_stop(self, reason: str) -> None: ...


def make_optimizer(
    params: Any, config: TrainConfig, methodology: Methodology | None = None
) -> torch.optim.Optimizer:
    """The real optimizer: a learned one when ``methodology`` is a learned optimizer, else
    ``config.optim``'s (its rate is set every step from the schedule)."""
    if isinstance(methodology, LSTMOptimizerNet):
        return LearnedOptimizer(params, methodology)
    o = config.optim
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
    return torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )


def make_meta_optimizer(params: Any, meta: MetaConfig) -> torch.optim.Optimizer:
    """The methodology's optimizer as ``meta`` says: Adam (optionally AMSGrad) or SGD with
    momentum (optionally Nesterov), at ``meta.lr`` with ``meta.weight_decay``."""
    if meta.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=meta.lr,
            momentum=meta.momentum,
            nesterov=meta.nesterov and meta.momentum > 0,
            weight_decay=meta.weight_decay,
        )
    return torch.optim.Adam(
        params, lr=meta.lr, weight_decay=meta.weight_decay, amsgrad=meta.amsgrad
    )


def virtual_step_of(
    optimizer: torch.optim.Optimizer, params: dict[str, Tensor], kind: str, lr: Any = None
) -> tuple[InnerOptimizer, Any]:
    """The virtual step of a meta step and its state: ``kind`` ``optimizer``, the step
    ``optimizer`` will take (:func:`~slem.bilevel.from_torch`); ``sgd``, the plain step
    ``theta - lr * grad``. ``lr``: a float or a function of the hyperparameters (default: the
    optimizer's current rate)."""
    if kind == "sgd":
        return SGD(lr=optimizer.param_groups[0]["lr"] if lr is None else lr), None
    return from_torch(optimizer, params, lr)


def hypergrad_options(method: str, optimizer: torch.optim.Optimizer, **fast: Any) -> dict[str, Any]:
    """The options a meta step passes to :func:`~slem.bilevel.hypergrad` for ``method``:
    ``fast`` (the lookahead fast path's ``jvp_mode``, ``keep_graph``, ``live_forward``) for
    ``lookahead``; for ``implicit`` five Neumann terms at the optimizer's current rate."""
    if method == "implicit":
        return {"solver": "neumann", "alpha": optimizer.param_groups[0]["lr"], "iterations": 5}
    return dict(fast) if method == "lookahead" else {}


class Trainer:
    """ERM, robust-loss baselines, fine-tuning, or a frozen methodology on one task."""

    #: the checkpoint last written or loaded (None: training has no checkpoint yet)
    last_checkpoint: Path | None = None

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        model: nn.Module | None = None,
        methodology: Methodology | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        self.spec = method_spec(config)
        self._check_task(config, task)
        self.config = config
        self.task = task
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.model = model or build_model(
            task.features.input_shape,
            task.n_classes,
            config.model.arch,
            config.model.width,
            config.model.depth,
            config.model.dropout,
            config.model.activation,
        )
        self.model.to(self.device)
        self.methodology = methodology.to(self.device) if methodology is not None else None
        self.callbacks = list(callbacks)
        self.train_x, self.train_y = self._tensors(task.train)
        self.val_x, self.val_y = self._tensors(task.val)
        self.test_x, self.test_y = self._tensors(task.test)
        self.meta_x: Tensor | None = None
        self.meta_y: Tensor | None = None
        if task.meta is not None:
            self.meta_x, self.meta_y = self._tensors(task.meta)
        self._setup_targets()
        self.optimizer = make_optimizer(self.model.parameters(), config, self.methodology)
        self.teacher = self._make_teacher()
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_score": -1.0, "epoch": -1, "state": None}
        self.timings: dict[str, list[float]] = {"plain": [], "meta": []}
        self.elapsed = 0.0
        self._stop: str | None = None
        self._epoch_stats: dict[str, list[float]] = {}
        self._check_model_output()

    # ------------------------------------------------------------------ setup

    def _check_task(self, config: TrainConfig, task: Task) -> None:
        if not task.is_classification:
            raise target_error(replace(self.spec, target="classification"), task)

    def _setup_targets(self) -> None:
        """What the losses need of the labels: class groups, class-balanced weights, prior."""
        task, config = self.task, self.config
        self.class_groups = torch.tensor(
            task.features.class_groups or [0] * task.n_classes, dtype=torch.long, device=self.device
        )
        counts = torch.tensor(task.features.class_counts, dtype=torch.float64)
        self.cb_weights = L.class_balanced_weights(counts, config.loss.cb_beta).to(self.device)
        prior = counts.clamp_min(1.0) / counts.clamp_min(1.0).sum()
        self.log_prior = prior.log().to(self.device, torch.float32)

    def _tensors(self, split: Split) -> tuple[Tensor, Tensor]:
        return (
            torch.as_tensor(split.X, dtype=torch.float32, device=self.device),
            torch.as_tensor(split.y, dtype=torch.long, device=self.device),
        )

    def _make_teacher(self) -> nn.Module | None:
        if not self._label_correction:
            return None
        teacher = copy.deepcopy(self.model)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    @property
    def weighting(self) -> MWNet | CMWNet | None:
        """The methodology when it is a sample-weighting net (else None)."""
        m = self.methodology
        return m if isinstance(m, MWNet | CMWNet) else None

    @property
    def _label_correction(self) -> bool:
        m = self.methodology
        return bool(getattr(m, "label_correction", False))

    def _check_model_output(self) -> None:
        self.model.eval()
        with torch.no_grad():
            out = self.model(self.train_x[:2])
        if not isinstance(out, Tensor) or out.shape != (
            min(2, len(self.train_x)),
            self.task.n_classes,
        ):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise SlemError(
                f"model output has shape {shape}; expected (batch, {self.task.n_classes}) "
                f"logits for the {self.task.n_classes} classes of '{self.task.name}'"
            )

    # ------------------------------------------------------------------ schedule

    @property
    def batch_size(self) -> int:
        return min(self.config.optim.batch_size, len(self.train_y))

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_y) // self.batch_size)

    @property
    def finetune_epochs(self) -> int:
        return self.config.loss.finetune_epochs if self.spec.finetune else 0

    @property
    def total_epochs(self) -> int:
        return self.config.optim.epochs + self.finetune_epochs

    @property
    def total_steps(self) -> int:
        ft = self.finetune_epochs * self._finetune_steps
        return self.config.optim.epochs * self.steps_per_epoch + ft

    @property
    def _finetune_steps(self) -> int:
        n = len(self.meta_y) if self.meta_y is not None else 1
        return max(1, n // min(32, n))

    def lr_at(self, step: int) -> float:
        o = self.config.optim
        if self.epoch >= o.epochs:  # fine-tuning phase
            return o.lr * self.config.loss.finetune_lr_factor
        total = o.epochs * self.steps_per_epoch
        t = min(step / max(total, 1), 1.0)
        if o.schedule == "cosine":
            return o.lr * 0.5 * (1.0 + math.cos(math.pi * t))
        if o.schedule == "step":
            return o.lr * o.gamma ** sum(t >= m for m in o.milestones)
        if o.schedule == "onecycle":
            if t < 0.3:
                return o.lr * (1 / 25 + (1 - 1 / 25) * t / 0.3)
            return o.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * (t - 0.3) / 0.7)))
        return o.lr

    # ------------------------------------------------------------------ loop

    def request_stop(self, reason: str) -> None:
        """Stop after the current step (signal handlers call this)."""
        self._stop = reason

    def fit(self, progress: bool = True) -> TrainResult:
        """Train to ``optim.epochs`` (from where a loaded checkpoint stands) and evaluate.

        ``progress``: show a progress bar on stderr (a live bar in a terminal, one line per
        epoch elsewhere) unless a :class:`~slem.train.ProgressBar` is among the callbacks.

        Raises:
            TrainingStopped: a stop was requested (Ctrl-C, :meth:`request_stop`).
            NonFiniteLoss: a loss, hypergradient or parameter became NaN or infinite.
        """
        from slem.train.callbacks import ProgressBar

        callbacks = self.callbacks
        if progress and not any(isinstance(cb, ProgressBar) for cb in callbacks):
            from rich.console import Console

            bar = ProgressBar(f"{self.config.method} {self.task.name}", Console(stderr=True))
            self.callbacks = [*callbacks, bar]
        try:
            return self._fit()
        finally:
            self.callbacks = callbacks

    def _fit(self) -> TrainResult:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        started = time.perf_counter() - self.elapsed
        try:
            while self.epoch < self.total_epochs:
                if self.step_in_epoch == 0:  # not again when resuming mid-epoch
                    self.on_epoch_start()
                x, y, steps, bs = self._epoch_data()
                perm = torch.randperm(
                    len(y),
                    generator=torch.Generator().manual_seed(
                        self.config.seed * 100_003 + self.epoch
                    ),
                ).to(self.device)
                while self.step_in_epoch < steps:
                    idx = perm[self.step_in_epoch * bs : (self.step_in_epoch + 1) * bs]
                    for g in self.optimizer.param_groups:
                        g["lr"] = self.lr_at(self.global_step)
                    with same_randomness():  # one draw of the model's randomness per step
                        stats = self.train_step(x[idx], y[idx], idx)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    self.elapsed = time.perf_counter() - started
                    for name, value in stats.items():
                        self._epoch_stats.setdefault(name, []).append(value)
                    for cb in self.callbacks:
                        cb.on_step_end(self, stats)
                    if self._stop is not None:
                        raise TrainingStopped(self._stop)
                metrics = self.end_epoch()
                for cb in self.callbacks:
                    cb.on_epoch_end(self, metrics)
        except KeyboardInterrupt:  # a hard interrupt may land mid-step: keep the last checkpoint
            self._stopped("aborted")
            raise TrainingStopped("aborted") from None
        except TrainingStopped as exc:
            self._stopped(exc.reason)
            raise
        except NonFiniteLoss:
            self._stopped("non-finite loss")
            raise
        except ZeroHypergradient:
            self._stopped("zero hypergradient")
            raise
        result = self.finish()
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    def _stopped(self, reason: str) -> None:
        for cb in self.callbacks:
            cb.on_stop(self, reason)

    def _epoch_data(self) -> tuple[Tensor, Tensor, int, int]:
        if self.epoch >= self.config.optim.epochs:  # fine-tuning on the clean meta set
            assert self.meta_x is not None and self.meta_y is not None
            bs = min(32, len(self.meta_y))
            return self.meta_x, self.meta_y, self._finetune_steps, bs
        return self.train_x, self.train_y, self.steps_per_epoch, self.batch_size

    def on_epoch_start(self) -> None:
        """Per-epoch preparation (MetaTrainer refreshes its self-selected meta set here)."""

    def validation_metrics(self) -> dict[str, float]:
        """What each epoch logs about the validation split."""
        val_loss, val_acc, val_bacc = self.evaluate(self.val_x, self.val_y)
        return {
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "val_balanced_accuracy": val_bacc,
        }

    def selection_score(self, row: dict[str, Any]) -> float:
        """Higher is better: the validation metric that picks the best epoch."""
        key = "val_balanced_accuracy" if self.select_on == "balanced_accuracy" else "val_accuracy"
        return float(row[key])

    def has_sample_weights(self) -> bool:
        return self.weighting is not None

    def end_epoch(self) -> dict[str, Any]:
        norms = self._epoch_stats.get("hypergrad_norm")
        if norms and max(norms) == 0.0:
            raise ZeroHypergradient(
                f"the hypergradient was exactly 0 in all {len(norms)} meta steps of epoch "
                f"{self.epoch + 1}: the methodology learns nothing with meta.hypergrad "
                f"'{self.config.meta.hypergrad}' here; use meta.hypergrad lookahead (see "
                "slem.train.validity)"
            )
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "lr": self.lr_at(self.global_step - 1),
            "seconds": round(self.elapsed, 2),
            **self.validation_metrics(),
        }
        for name, values in self._epoch_stats.items():
            row[f"train_{name}"] = float(np.mean(values)) if values else None
        if self.has_sample_weights():
            weights = self.train_weights()
            row["weight_auc"] = self.weight_auc(weights)
            noisy = self.task.train.noisy_mask
            row["weight_mean_clean"] = float(weights[~noisy].mean()) if (~noisy).any() else None
            row["weight_mean_noisy"] = float(weights[noisy].mean()) if noisy.any() else None
        if self.teacher is not None:
            row.update(self.pseudo_label_metrics())
        self.history.append(row)
        score = self.selection_score(row)
        best = self.best["val_score"]
        if math.isfinite(score) and (best is None or score > best):
            self.best = {
                "val_score": score,
                "epoch": self.epoch + 1,
                "state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            }
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_stats = {}
        return row

    # ------------------------------------------------------------------ steps

    def per_sample_losses(self, logits: Tensor, y: Tensor) -> Tensor:
        """The method's per-sample training loss (cross-entropy while fine-tuning)."""
        if self.epoch >= self.config.optim.epochs:
            return L.cross_entropy(logits, y)
        return self.spec.loss(logits, y, self)

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        self.model.train()
        logits = self.model(x)
        if self.weighting is not None and self.epoch < self.config.optim.epochs:
            terms = self.weighted_terms(logits, y, self.pseudo_labels(x))
            with torch.no_grad():
                w = self.weights_for(self.weighting, weight_input(terms), y)
            loss = inner_value(terms, w)
        else:
            loss = self.per_sample_losses(logits, y).mean()
        return self._optimize(loss, start)

    def _optimize(self, loss: Tensor, start: float) -> dict[str, float]:
        """The real step on ``loss``, timed as a plain step."""
        self._apply_step(loss)
        self.timings["plain"].append(time.perf_counter() - start)
        return {"loss": float(loss.detach())}

    def _apply_step(self, loss: Tensor) -> None:
        """Backward and optimizer step on ``loss``, with finiteness checks before and after."""
        self._check_finite(loss, "training loss")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._check_parameters()
        self.update_teacher()

    def forward(self, x: Tensor) -> Tensor:
        """The real step's forward pass, with the random state the step's meta step used
        (dropout draws the same masks as in the virtual step; see
        :func:`~slem.bilevel.same_randomness`)."""
        replay_randomness()
        out: Tensor = self.model(x)
        return out

    def inner_params(self) -> dict[str, Tensor]:
        """The inner parameters of every meta step: the model's *trainable* parameters, as
        :meth:`~slem.bilevel.BilevelProblem.from_module` takes them. Frozen ones
        (``requires_grad=False``) are neither moved by virtual steps nor differentiated,
        exactly as the real optimizer leaves them."""
        return as_params(self.model, "params")

    def virtual_optimizer(
        self, params: dict[str, Tensor], lr: float | Any = None
    ) -> tuple[InnerOptimizer, Any]:
        """The differentiable update of the virtual step and its state.

        ``meta.virtual_step: optimizer`` (default) takes the step the real optimizer will
        take: SGD with its momentum buffer, Nesterov and weight decay, or Adam with its moment
        estimates, so the hypergradient is that of the next iterate. ``sgd`` takes the plain
        step ``theta - lr * grad`` of the official MW-Net / CMW-Net code (Shu et al. 2019,
        2023). ``lr``: a float or a function of the hyperparameters (default: the real
        optimizer's current rate).
        """
        return virtual_step_of(self.optimizer, params, self.config.meta.virtual_step, lr)

    def solve(
        self, problem: BilevelProblem, inner_batch: Any, outer_batch: Any, **fast: Any
    ) -> Hypergrad:
        """``hypergrad(problem, meta.hypergrad)``, checked finite, recorded (its norm is the
        epoch's ``train_hypergrad_norm``; an epoch whose every hypergradient is exactly zero
        stops the run) and passed to every callback's ``on_hypergradient``. ``fast``: the
        lookahead fast path's options (ignored by the other methods)."""
        method = self.config.meta.hypergrad
        options = hypergrad_options(method, self.optimizer, **fast)
        result = hypergrad(
            problem, method, inner_batch=inner_batch, outer_batch=outer_batch, **options
        )
        for g in result.grads.values():
            self._check_finite(g, "hypergradient")
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in result.grads.values()))
        self._epoch_stats.setdefault("hypergrad_norm", []).append(norm)
        for cb in self.callbacks:
            cb.on_hypergradient(self, result)
        return result

    def meta_hypergrad(
        self,
        hyper: dict[str, Tensor],
        inner_loss: Any,
        outer_loss: Any,
        inner_batch: Any,
        outer_batch: Any,
        lr: float | Any = None,
    ) -> Hypergrad:
        """The hypergradient of ``outer_loss`` after one virtual step (:meth:`virtual_optimizer`)
        on ``inner_loss``, by ``meta.hypergrad`` (:meth:`solve`). ``lr``: the virtual step's
        rate, a float or a function of ``hyper`` (default: the optimizer's current rate)."""
        params = self.inner_params()
        opt, state = self.virtual_optimizer(params, lr)
        problem = BilevelProblem(params, hyper, inner_loss, outer_loss, opt, optimizer_state=state)
        return self.solve(problem, inner_batch, outer_batch)

    def dac_views(self, n: int) -> dict[str, Tensor]:
        """DAC-MR's unlabeled batch: ``n`` training inputs (labels unused) under a weak and a
        strong augmentation."""
        pick = torch.randint(0, len(self.train_y), (n,), generator=self.generator).to(self.device)
        unlabeled = self.train_x[pick]
        return {
            "weak": augment(unlabeled, "weak", self.generator),
            "strong": augment(unlabeled, "strong", self.generator),
        }

    def _check_parameters(self) -> None:
        """A finite loss can still step the parameters to infinity: catch it right here, before
        any checkpoint can record that state."""
        state = {k: t for k, t in self.model.state_dict().items() if t.is_floating_point()}
        if bool(torch.stack([t.isfinite().all() for t in state.values()]).all()):
            return  # one device sync per step; the slow search below runs only on a blow-up
        for name, t in state.items():
            if not bool(t.isfinite().all()):
                raise NonFiniteLoss(
                    f"the model's {name} became non-finite ({_first_non_finite(t)}) at "
                    f"{self._where()}; {self._recovery()}"
                )

    def _check_finite(self, value: Tensor, what: str) -> None:
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteLoss(
                f"the {what} became {_first_non_finite(value)} at {self._where()}; "
                f"{self._recovery()}"
            )

    def _where(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step_in_epoch + 1}"

    def _recovery(self) -> str:
        """What the user can do after a blow-up: resume from a checkpoint only if one exists."""
        if self.last_checkpoint is not None and self.last_checkpoint.is_file():
            return (
                f"the last checkpoint before it is kept ({self.last_checkpoint}): lower "
                "optim.lr (or meta.lr) and resume, or restart"
            )
        return "no checkpoint was written yet: lower optim.lr (or meta.lr) and start again"

    # ------------------------------------------------------------------ weighting

    def pseudo_labels(self, x: Tensor) -> Tensor | None:
        """CMW-Net-SL: sharpened, prior-adjusted predictions of the EMA teacher (None without
        correction)."""
        if self.teacher is None:
            return None
        self.teacher.eval()
        with torch.no_grad():
            logits = self.teacher(x)
            if self.config.meta.sl_prior_correction:
                logits = logits - self.log_prior
            return F.softmax(logits / self.config.meta.sl_temperature, dim=1)

    def weighted_terms(self, logits: Tensor, y: Tensor, pseudo: Tensor | None) -> PerSample:
        given = L.cross_entropy(logits, y)
        if pseudo is None:
            return PerSample(weighted=given)
        soft = L.soft_cross_entropy(logits, pseudo)
        return PerSample(weighted=given - soft, unweighted=soft, features=given)

    def weights_for(self, methodology: nn.Module, losses: Tensor, y: Tensor) -> Tensor:
        return self.normalized(methodology(losses, self.class_groups[y]), y)

    def normalized(self, w: Tensor, y: Tensor) -> Tensor:
        """MW-Net's normalization to mean 1 (``batch``), or to mean 1 within each given label
        (``class``: a loss-only weight cannot single out the clean samples of a class the
        model has lost, all of whose losses are high; this keeps that class in the step).
        Never under label correction, where ``w`` mixes two labels and stays in (0, 1)."""
        if self._label_correction:
            return w
        return normalize_weights(w, self.normalization, y, self.task.n_classes)

    def update_teacher(self) -> None:
        """EMA of the model's weights, with the decay ramped up as ``t / (t + 1)`` over the
        first steps (as in mean teacher): a plain EMA from step 0 averages the random
        initialization into the teacher for hundreds of steps, while its BatchNorm statistics
        are the current model's, and its pseudo-labels are then worse than the noisy labels."""
        if self.teacher is None:
            return
        step = self.global_step
        decay = min(self.config.meta.ema_decay, step / (step + 1))
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.model.parameters(), strict=True):
                t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
            for tb, sb in zip(self.teacher.buffers(), self.model.buffers(), strict=True):
                tb.copy_(sb)

    def train_weights(self) -> np.ndarray:
        """The methodology's (unnormalized) weight of every training sample, in eval mode."""
        assert self.weighting is not None
        losses = self.per_sample_eval_losses(self.train_x, self.train_y)
        with torch.no_grad():
            w = self.weighting(losses, self.class_groups[self.train_y])
        return w.cpu().numpy()

    def pseudo_label_metrics(self) -> dict[str, float | None]:
        """How the teacher's pseudo-labels relate to the true labels (analysis only): on
        noisy samples, the share they correct (``pseudo_correct_noisy``) and the share they
        repeat the wrong given label (``pseudo_keeps_noise``); on clean samples, the share
        they would corrupt (``pseudo_wrong_clean``)."""
        assert self.teacher is not None
        self.teacher.eval()
        predicted = []
        with torch.no_grad():
            for i in range(0, len(self.train_y), EVAL_BATCH):
                soft = self.pseudo_labels(self.train_x[i : i + EVAL_BATCH])
                assert soft is not None
                predicted.append(soft.argmax(1))
        pseudo = torch.cat(predicted).cpu().numpy()
        split = self.task.train
        noisy = split.noisy_mask

        def share(hit: np.ndarray, where: np.ndarray) -> float | None:
            return float(hit[where].mean()) if where.any() else None

        return {
            "pseudo_correct_noisy": share(pseudo == split.y_true, noisy),
            "pseudo_keeps_noise": share(pseudo == split.y, noisy),
            "pseudo_wrong_clean": share(pseudo != split.y_true, ~noisy),
        }

    def weight_auc(self, weights: np.ndarray) -> float | None:
        """AUC of the weights for telling truly clean (positive) from truly noisy samples."""
        noisy = self.task.train.noisy_mask
        if noisy.all() or not noisy.any():
            return None
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(~noisy, weights))

    # ------------------------------------------------------------------ evaluation

    def per_sample_eval_losses(self, x: Tensor, y: Tensor) -> Tensor:
        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(y), EVAL_BATCH):
                out.append(
                    L.cross_entropy(self.model(x[i : i + EVAL_BATCH]), y[i : i + EVAL_BATCH])
                )
        return torch.cat(out)

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

    def evaluate(
        self, x: Tensor, y: Tensor, model: nn.Module | None = None
    ) -> tuple[float, float, float]:
        """(mean cross-entropy, accuracy, balanced accuracy) in eval mode; balanced accuracy is
        the mean recall over the classes present in ``y``."""
        model = model or self.model
        model.eval()
        total_loss = 0.0
        hits = torch.zeros(self.task.n_classes, device=y.device)
        with torch.no_grad():
            for i in range(0, len(y), EVAL_BATCH):
                logits = model(x[i : i + EVAL_BATCH])
                yb = y[i : i + EVAL_BATCH]
                total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                hits.index_add_(0, yb, (logits.argmax(1) == yb).float())
        n = max(len(y), 1)
        support = torch.bincount(y, minlength=self.task.n_classes).float()
        present = support > 0
        balanced = float((hits[present] / support[present]).mean()) if present.any() else 0.0
        return total_loss / n, float(hits.sum()) / n, balanced

    def finish(self) -> TrainResult:
        _, test_acc, _ = self.evaluate(self.test_x, self.test_y)
        final = self.history[-1] if self.history else {}
        best_test = None
        if self.best["state"] is not None:
            best_model = copy.deepcopy(self.model)
            best_model.load_state_dict(self.best["state"])
            best_test = self.evaluate(self.test_x, self.test_y, best_model)[1]
        weights = self.train_weights() if self.weighting is not None else None
        meta = self.timings["meta"]
        summary = {
            "method": self.config.method,
            "dataset": self.task.name,
            "noise": str(self.task.noise) if self.task.noise else None,
            "imbalance": self.task.imbalance,
            "seed": self.config.seed,
            "epochs": self.epoch,
            "steps": self.global_step,
            "seconds": round(self.elapsed, 2),
            "val_accuracy": final.get("val_accuracy"),
            "test_accuracy": test_acc,
            "selected_on": f"val_{self.select_on}",
            "best_val_score": self.best["val_score"],
            "best_epoch": self.best["epoch"],
            "test_accuracy_at_best_val": best_test,
            "weight_auc": self.weight_auc(weights) if weights is not None else None,
            "noise_rate_realized": self.task.train.noise_rate,
            "n_train": len(self.task.train),
            "n_meta": len(self.task.meta) if self.task.meta is not None else 0,
            "meta_step_time_ratio": (
                float(np.median(meta) / np.median(self.plain_step_times())) if meta else None
            ),
            **self.task.provenance(),  # where the test labels came from: clean or as given
        }
        return TrainResult(self.history, summary, weights)

    def record(self, result: TrainResult) -> RunRecord:
        """The finished run as plain data for :mod:`slem.report`: ``result``'s history and
        summary, and the named arrays this trainer has (see :class:`RunRecord`)."""
        return trainer_record(self, result)

    def plain_step_times(self, probes: int = 5) -> list[float]:
        """Seconds of plain (ERM) training steps: those the run took (warm-up, steps between
        meta steps), or, when it took fewer than 3 (``meta.warmup_epochs: 0``,
        ``meta.interval: 1``), ``probes`` ERM steps timed now on a copy of the model and
        optimizer (the run's model, optimizer and random state are untouched)."""
        if len(self.timings["plain"]) >= 3:
            return self.timings["plain"]
        model = copy.deepcopy(self.model).train()
        optimizer = make_optimizer(model.parameters(), self.config)
        optimizer.load_state_dict(self.optimizer.state_dict())
        pick = torch.Generator().manual_seed(self.config.seed)
        times = []
        with torch.random.fork_rng(devices=[]):
            for _ in range(probes + 1):
                idx = torch.randint(0, len(self.train_y), (self.batch_size,), generator=pick)
                idx = idx.to(self.device)
                start = time.perf_counter()
                loss = L.cross_entropy(model(self.train_x[idx]), self.train_y[idx]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - start)
        return times[1:]  # the first is a warm-up (allocations)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stands."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "methodology": self.methodology.state_dict() if self.methodology is not None else None,
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best": self.best,
            "timings": self.timings,
            "elapsed": self.elapsed,
            "epoch_stats": self._epoch_stats,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "config": self.config.model_dump(mode="json"),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.methodology is not None and state["methodology"] is not None:
            self.methodology.load_state_dict(state["methodology"])
        if self.teacher is not None and state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
        for name in (
            "epoch",
            "step_in_epoch",
            "global_step",
            "history",
            "best",
            "timings",
            "elapsed",
        ):
            setattr(self, name, state[name])
        self._epoch_stats = state["epoch_stats"]
        # RNG states are CPU byte tensors, whatever map_location moved them to
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])

    def save_checkpoint(self, path: str | Path) -> Path:
        """Atomic write: a kill during the write leaves the previous checkpoint intact."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        self.last_checkpoint = path
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from ``path``.

        Raises:
            SlemError: the file is missing, damaged, or from a different model or method.
        """
        from slem.train.checkpoint_io import load_checkpoint_into

        path = Path(path)
        load_checkpoint_into(path, self.load_state, self.device, ("model", "optimizer", "epoch"))
        self.last_checkpoint = path


def _first_non_finite(value: Tensor) -> str:
    """The first NaN or infinite entry of ``value`` and where it is, e.g. ``nan (entry 3)``."""
    flat = value.detach().reshape(-1)
    bad = torch.nonzero(~torch.isfinite(flat))
    if len(bad) == 0:
        return "finite"
    i = int(bad[0])
    shown = f"{float(flat[i])}"
    if flat.numel() == 1:
        return shown
    return f"{shown} at entry {i} of {flat.numel()}, {len(bad)} non-finite"


class MetaTrainer(Trainer):
    """Meta-learns a sample-weighting methodology while training the model.

    Each meta step builds a :class:`~slem.bilevel.WeightedProblem` over the current batch
    and asks the engine for the hypergradient of the meta objective with respect to the
    weighting net (``meta.hypergrad``; ``lookahead`` takes the structured fast path), takes
    an Adam step on the net, then the real training step with the updated weights (or, in
    the ``lagged`` order, reuses the virtual step as the real one).
    """

    def __init__(
        self,
        config: TrainConfig,
        task: Task,
        model: nn.Module | None = None,
        methodology: Methodology | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None,
    ) -> None:
        meta = config.meta
        if methodology is None:  # seeded here, so a run does not depend on what ran before
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + 1_000_003)
                methodology = self.new_methodology(config, task)
        super().__init__(config, task, model, methodology, callbacks, device)
        assert self.methodology is not None
        if "clean" in meta.objective and self.meta_training:
            n_meta = len(task.meta) if task.meta is not None else 0
            if n_meta < task.n_classes:
                raise SlemError(
                    f"the meta set has {n_meta} samples, fewer than the {task.n_classes} "
                    "classes; raise data.meta_per_class or use meta.objective dac or selected"
                )
        self.meta_optimizer: torch.optim.Optimizer | None = None
        if self.meta_training:
            self.meta_optimizer = make_meta_optimizer(self.meta_parameters(), meta)
        self.selected: Tensor | None = None
        self._f_model = functional(self.model)
        self._f_meth = functional(self.methodology)

    # ------------------------------------------------------------------ state

    meta_training: bool = True

    def new_methodology(self, config: TrainConfig, task: Task) -> Methodology:
        """The untrained methodology this trainer meta-learns."""
        (kind,) = method_spec(config).meta_learns
        meta = config.meta
        return build_weighting(kind, meta.n_groups, meta.hidden, meta.monotone)

    def meta_parameters(self) -> list[nn.Parameter]:
        """What the meta optimizer steps."""
        assert self.methodology is not None
        return list(self.methodology.parameters())

    def state(self) -> dict[str, Any]:
        opt = self.meta_optimizer
        return {
            **super().state(),
            "meta_optimizer": opt.state_dict() if opt is not None else None,
            "selected": self.selected,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if self.meta_optimizer is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.selected = state["selected"]

    # ------------------------------------------------------------------ epochs

    @property
    def in_warmup(self) -> bool:
        return self.meta_training and self.epoch < self.config.meta.warmup_epochs

    def on_epoch_start(self) -> None:
        selecting = self.config.meta.objective == "selected" and self.meta_training
        if selecting and not self.in_warmup:
            self.selected = self.select_clean()

    def select_clean(self) -> Tensor:
        """Per class, the ``select_per_class`` training samples with the lowest loss."""
        losses = self.per_sample_eval_losses(self.train_x, self.train_y)
        k = self.config.meta.select_per_class
        chosen = []
        for c in range(self.task.n_classes):
            idx = torch.nonzero(self.train_y == c).squeeze(1)
            if len(idx):
                chosen.append(idx[torch.argsort(losses[idx])[:k]])
        return torch.cat(chosen)

    # ------------------------------------------------------------------ steps

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        if self.in_warmup:
            return self._warmup_step(x, y)
        if self.global_step % self.config.meta.interval == 0:
            return self._meta_step(x, y)
        return super().train_step(x, y, idx)

    def _warmup_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        self.model.train()
        return self._optimize(L.cross_entropy(self.model(x), y).mean(), start)

    def _per_sample(self, params: dict[str, Tensor], batch: tuple[Any, ...]) -> PerSample:
        x, y, pseudo = batch
        # functional: no side effects, except the fast path's live forward (the real step's
        # forward, options live_forward/keep_graph) which moves BatchNorm statistics once
        return self.weighted_terms(self._f_model(params, x), y, pseudo)

    def _weights(self, hyper: dict[str, Tensor], losses: Tensor, batch: tuple[Any, ...]) -> Tensor:
        return self.normalized(self._f_meth(hyper, losses, self.class_groups[batch[1]]), batch[1])

    def _outer_batch(self) -> dict[str, Tensor]:
        meta = self.config.meta
        out: dict[str, Tensor] = {}
        if "clean" in meta.objective or meta.objective == "selected":
            if meta.objective == "selected":
                assert self.selected is not None
                pool_x, pool_y = self.train_x[self.selected], self.train_y[self.selected]
            else:
                assert self.meta_x is not None and self.meta_y is not None
                pool_x, pool_y = self.meta_x, self.meta_y
            take = torch.randperm(len(pool_y), generator=self.generator)[: meta.batch_size]
            take = take.to(self.device)
            out["x"], out["y"] = pool_x[take], pool_y[take]
        if "dac" in meta.objective:
            out.update(self.dac_views(meta.batch_size))
        return out

    def _outer_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> Tensor:
        meta = self.config.meta
        total = torch.zeros((), device=self.device)
        if "y" in batch:
            ce = F.cross_entropy(self._f_model(params, batch["x"]), batch["y"])
            total = total + (meta.clean_weight if meta.objective == "clean+dac" else 1.0) * ce
        if "weak" in batch:  # DAC-MR: predictions on strong views should match weak views
            with torch.no_grad():
                target = F.softmax(
                    self._f_model(params, batch["weak"]).detach() / meta.dac_temperature, dim=1
                )
            logits = self._f_model(params, batch["strong"])
            total = total + meta.dac_weight * L.soft_cross_entropy(logits, target).mean()
            if meta.dac_prior_weight > 0:
                total = total + meta.dac_prior_weight * self.prior_gap(logits)
        return total

    def prior_gap(self, logits: Tensor) -> Tensor:
        """``KL(prior || mean softmax)``: zero when the batch's average prediction has the
        observed label frequencies, large when the model predicts few classes."""
        prior = self.log_prior.exp()
        mean_log = torch.logsumexp(F.log_softmax(logits, dim=1), dim=0) - math.log(len(logits))
        return (prior * (self.log_prior - mean_log)).sum()

    def _meta_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        start = time.perf_counter()
        meta = self.config.meta
        assert self.methodology is not None
        self.model.train()
        pseudo = self.pseudo_labels(x)
        params = self.inner_params()
        opt, state = self.virtual_optimizer(params)
        problem = WeightedProblem(
            params,
            dict(self.methodology.named_parameters()),
            self._per_sample,
            self._weights,
            self._outer_loss,
            opt,
            optimizer_state=state,
        )
        fast = meta.hypergrad == "lookahead"
        reuse = fast and meta.order == "mwnet"
        result = self.solve(
            problem,
            (x, y, pseudo),
            self._outer_batch(),
            jvp_mode=meta.jvp_mode,
            keep_graph=reuse,
            live_forward=True,
        )
        assert self.meta_optimizer is not None
        self.meta_optimizer.zero_grad(set_to_none=True)
        result.accumulate_into(self.methodology)
        self.meta_optimizer.step()

        if fast and meta.order == "lagged":  # the virtual step is the real step
            inner = result.diagnostics["inner_grads"]
            self.optimizer.zero_grad(set_to_none=True)
            for name, p in params.items():
                p.grad = inner[name]
            terms_loss = float("nan")
            self.optimizer.step()
        else:
            if reuse:  # the real step reuses the meta step's forward pass
                terms: PerSample = result.diagnostics["losses"]
            else:
                terms = self.weighted_terms(self.forward(x), y, pseudo)
            with torch.no_grad():
                w = self.weights_for(self.methodology, weight_input(terms), y)
            loss = inner_value(terms, w)
            self._check_finite(loss, "training loss")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            terms_loss = float(loss.detach())
        self._check_parameters()
        self.update_teacher()
        self.timings["meta"].append(time.perf_counter() - start)
        return {
            "loss": terms_loss if not math.isnan(terms_loss) else result.outer_loss,
            "meta_loss": result.outer_loss,
        }


def make_trainer(
    config: TrainConfig,
    task: Task,
    model: nn.Module | None = None,
    methodology: Methodology | None = None,
    callbacks: Sequence[Callback] = (),
) -> Trainer:
    """The right trainer for ``config.method`` (and, for apply, the methodology's kind) on
    ``task``; ``config.data`` may be left out (the task is given). ``model``: your own
    ``nn.Module`` mapping a batch of inputs to ``(batch, n_classes)`` logits (default: built
    from ``config.model``).

    Raises:
        SlemError: the method does not fit the task (or needs a meta set it lacks), or the
            configuration cannot learn (:mod:`slem.train.validity`).
    """
    from slem.train.validity import check_methodology, check_task

    spec = method_spec(config)
    if spec.target is not None:
        check_task(config, task)
    needs = spec.needs_meta_set(config)
    if needs is not None and config.data is None and task.meta is None:
        raise SlemError(
            f"{needs} and task '{task.name}' has none: give it one (Task.from_arrays(..., "
            "x_meta=..., y_meta=...) or meta_per_class=10)"
            + (", or use meta.objective dac or selected" if spec.meta_set == "objective" else "")
        )
    trainer = build_trainer(config, task, model, methodology, callbacks)
    if trainer.methodology is not None and spec.is_meta:
        check_methodology(config, sum(p.numel() for p in trainer.methodology.parameters()))
    return trainer
