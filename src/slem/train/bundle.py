"""Meta-learning several methodologies in one run: :class:`BundleTrainer`.

The training loss of a batch is built from whichever parts the bundle has:

    p      = softmax(f(x))                     the classifier
    p~     = p T(x)                            transition net (forward correction)
    l_i    = robust_loss(p~_i, y_i; a_i)       loss adjuster, a_i = A(margin_i, CE_i, group)
             (else -log p~_{y_i})
    L_in   = mean(w_i * l_i)                   weighting net, w_i = W(CE_i, group), mean 1
    step   = lr(theta_s) * SGD direction       schedule net (MLR-SNet)

One meta step differentiates the meta objective (clean meta set, DAC-MR, both, or self-selected
samples; :class:`~slem.train.trainer.MetaTrainer`'s) at the looked-ahead parameters
``w - lr(theta_s) d(theta_w, theta_a, theta_t)`` with respect to *all* parts at once, through
the engine (``meta.hypergrad``): the parts are learned against the same objective and adapt to
each other. Method ``loss_adjuster`` or ``transition`` is the one-part bundle; ``joint`` lists
its parts in ``joint.components``. With method ``apply`` the (saved) bundle is frozen: no meta
set, no meta steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import BilevelProblem, FunctionalModel, functional
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import (
    CMWNet,
    LossAdjusterNet,
    Methodology,
    MethodologyBundle,
    MLRSNet,
    MWNet,
    TransitionNet,
    adjusted_loss,
    as_bundle,
    forward_corrected,
)
from slem.train import losses as L
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig
from slem.train.diagnostics import adjuster_values, logit_margin, mean_transition, row_error
from slem.train.hooks import new_weighting
from slem.train.meta_step import PendingStep
from slem.train.meta_trainer import MetaTrainer
from slem.train.methods import method_spec
from slem.train.record import RunRecord, adjuster_arrays, lr_arrays
from slem.train.schedule import LearnedRate, training_loss
from slem.train.trainer import TrainResult

Part = Callable[..., Tensor]


def new_bundle(config: TrainConfig, task: Task) -> MethodologyBundle:
    """The untrained parts ``config``'s method meta-learns together, as one bundle."""
    meta = config.meta
    parts: list[Methodology] = []
    for name in components_of(config):
        if name in ("mwnet", "cmwnet"):
            parts.append(new_weighting(name, meta))
        elif name == "loss_adjuster":
            a = config.adjuster
            parts.append(LossAdjusterNet(a.family, meta.n_groups, a.hidden))
        elif name == "transition":
            t = config.transition
            n_inputs = int(np.prod(task.features.input_shape))
            parts.append(TransitionNet(n_inputs, task.n_classes, t.hidden, t.init_diagonal))
        elif name == "lr_schedule":
            s = config.schedule
            parts.append(MLRSNet(s.hidden, s.stages, s.switch_at))
        else:
            raise SlemError(f"'{name}' cannot be meta-learned in a bundle")
    return MethodologyBundle.of(*parts)


def parts_summary(trainer: BundleTrainer) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a bundle's parts learned, for the run's summary (and its ``extra``): the
    adjuster's mean hyperparameters on clean and noisy samples, the transition net's error
    against the true matrix (and, under instance-dependent noise, per row), the first and last
    learned rate."""
    task, noisy = trainer.task, trainer.task.train.noisy_mask
    s: dict[str, Any] = {"components": list(trainer.bundle.parts)}
    extra: dict[str, Any] = {}
    if trainer.adjuster is not None:
        values = trainer.adjuster_values()
        for j, name in enumerate(trainer.adjuster.names):
            clean, bad = values[~noisy, j], values[noisy, j]
            s[f"adjuster_{name}_clean"] = float(clean.mean()) if len(clean) else None
            s[f"adjuster_{name}_noisy"] = float(bad.mean()) if len(bad) else None
    net = trainer.transition_net
    if net is not None and task.transition_rows is not None:
        s["transition_row_error"] = row_error(
            net, trainer.train_x, task.train.y_true, task.transition_rows
        )
    if net is not None and task.transition is not None:
        predicted = trainer.mean_transition()
        s["transition_error"] = float(np.abs(predicted - task.transition).sum(1).mean() / 2)
        extra["transition"] = predicted.tolist()
    if trainer.rate is not None:
        trace = trainer.rate.trace
        s.update(lr_first=trace[0] if trace else None, lr_last=trace[-1] if trace else None)
    return s, extra


def frozen_parts(bundle: MethodologyBundle) -> dict[str, Part]:
    """The parts as they are, their outputs constants of the real training step (the
    schedule sets the rate, not the loss)."""

    def frozen(module: nn.Module) -> Part:
        def call(*args: Any) -> Tensor:
            with torch.no_grad():
                out: Tensor = module(*args)
            return out

        return call

    return {role: frozen(m) for role, m in bundle.parts.items() if role != "schedule"}


def functional_parts(
    functionals: Mapping[str, FunctionalModel], hyper: Mapping[str, Tensor]
) -> dict[str, Part]:
    """The parts as functions of the hyperparameters ``hyper`` (named ``parts.<role>.*``),
    for the hypergradient."""
    out: dict[str, Part] = {}
    for role, f in functionals.items():
        if role == "schedule":
            continue
        prefix = f"parts.{role}."
        sub = {k[len(prefix) :]: v for k, v in hyper.items() if k.startswith(prefix)}
        out[role] = lambda *args, f=f, sub=sub: f(sub, *args)
    return out


def components_of(config: TrainConfig) -> list[str]:
    """The methodologies ``config``'s method meta-learns together."""
    return method_spec(config).components_of(config)


class BundleTrainer(MetaTrainer):
    """Meta-learns (methods ``loss_adjuster``, ``transition``, ``joint``) or applies (method
    ``apply``) a bundle of methodologies; see the module docstring."""

    serial_only = (
        "a bundle of methodologies (loss adjuster, transition, joint) cannot train "
        "data-parallel yet; run it on one process"
    )

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
        if methodology is None and not self.meta_training:
            raise SlemError("method apply needs the frozen methodology artifact")
        if methodology is not None:
            methodology = as_bundle(methodology)
            if "weighting" in methodology.parts and isinstance(
                methodology.parts["weighting"], CMWNet
            ):
                _check_label_correction(methodology.parts["weighting"])
        super().__init__(config, task, model, methodology, callbacks, device)
        assert isinstance(self.methodology, MethodologyBundle)
        self.bundle: MethodologyBundle = self.methodology
        weighting = self.bundle.part("weighting")
        if isinstance(weighting, MWNet | CMWNet):  # the weighting part's sample weights
            self.sample_weights = self.new_sample_weights(weighting)
        transition = self.bundle.part("transition")
        if isinstance(transition, TransitionNet):
            transition.check_task(int(np.prod(task.features.input_shape)), task.n_classes)
        schedule = self.bundle.part("schedule")
        self.rate: LearnedRate | None = None
        if isinstance(schedule, MLRSNet):
            self.rate = LearnedRate(
                schedule, config, task.n_classes, self.meta_training, self.device
            )
        self._functional = {role: functional(m) for role, m in self.bundle.parts.items()}
        self._rate_input: Tensor | None = None

    # ------------------------------------------------------------------ setup

    def new_methodology(self, config: TrainConfig, task: Task) -> Methodology:
        return new_bundle(config, task)

    def meta_hyper(self) -> dict[str, nn.Parameter]:
        """Every part's parameters, except the schedule's frozen snapshots."""
        return dict(self._hyper_items())

    def _hyper_items(self) -> list[tuple[str, nn.Parameter]]:
        assert isinstance(self.methodology, MethodologyBundle)
        schedule = self.methodology.part("schedule")
        live = (
            f"parts.schedule.stages.{len(schedule.stages) - 1}."
            if isinstance(schedule, MLRSNet)
            else ""
        )
        return [
            (name, p)
            for name, p in self.methodology.named_parameters()
            if not name.startswith("parts.schedule.") or name.startswith(live)
        ]

    @property
    def adjuster(self) -> LossAdjusterNet | None:
        a = self.bundle.part("loss")
        return a if isinstance(a, LossAdjusterNet) else None

    @property
    def transition_net(self) -> TransitionNet | None:
        t = self.bundle.part("transition")
        return t if isinstance(t, TransitionNet) else None

    # ------------------------------------------------------------------ the loss

    def bundle_loss(
        self, logits: Tensor, x: Tensor, y: Tensor, parts: Mapping[str, Part]
    ) -> Tensor:
        """The training loss of a batch given callables for the bundle's parts."""
        ce = L.cross_entropy(logits, y)
        groups = self.labels.class_groups[y]
        probs = F.softmax(logits, dim=1)
        corrected = "transition" in parts
        if corrected:
            probs = forward_corrected(probs, parts["transition"](x))
        if "loss" in parts:
            adjuster = self.adjuster
            assert adjuster is not None
            margin = logit_margin(logits.detach(), y)
            hyper = parts["loss"](margin, ce.detach(), groups)
            per = adjusted_loss(probs, y, adjuster.family, hyper)
        elif corrected:
            per = -probs.gather(1, y[:, None]).squeeze(1).clamp_min(1e-7).log()
        else:
            per = ce
        if "weighting" in parts:
            assert self.sample_weights is not None
            sw = self.sample_weights  # batches of the joint method carry no sample indices
            inputs = sw.observer.features(ce, None, sw.clock())
            w = sw.normalized(parts["weighting"](inputs, groups), y)
            return (w * per).mean()
        return per.mean()

    def lr_at(self, step: int) -> float:
        return self.rate.current if self.rate is not None else super().lr_at(step)

    def on_epoch_start(self) -> None:
        super().on_epoch_start()
        if self.rate is not None:
            if self.rate.scale is None:
                self.rate.rescale(training_loss(self))
            self.rate.on_epoch_start(self.progress.epoch, self.progress.global_step)

    def end_epoch(self) -> dict[str, Any]:
        row = super().end_epoch()
        if self.rate is not None:
            self.rate.on_epoch_end(self.progress.epoch)
        return row

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, float]:
        if self.in_warmup:
            return self._warmup_step(x, y, idx)
        if self.meta_step_due:
            return self.meta_train_step(x, y, idx)
        start = time.perf_counter()
        self.model.train()
        logits = self.model(x)
        self._rate_input = F.cross_entropy(logits.detach(), y)
        return self._optimize(self.bundle_loss(logits, x, y, frozen_parts(self.bundle)), start)

    def _apply_step(self, loss: Tensor) -> float:
        """The learned schedule, if any, sets the rate from the batch's cross-entropy first."""
        if self.rate is not None:
            seen = self._rate_input if self._rate_input is not None else loss.detach()
            lr = self.rate.next(seen, self.progress.epoch, self.progress.step_in_epoch)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
        self._rate_input = None
        return super()._apply_step(loss)

    def _inner_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: Any
    ) -> Tensor:
        x, y = batch
        return self.bundle_loss(
            self._f_model(params, x), x, y, functional_parts(self._functional, hyper)
        )

    def meta_problem(
        self, x: Tensor, y: Tensor, idx: Tensor | None = None
    ) -> tuple[BilevelProblem, Any, Any]:
        """The bilevel problem of a meta step on the batch ``(x, y)`` over every part's
        parameters (:meth:`meta_hyper`), with its inner and outer batch: one virtual step on
        the bundle's training loss, at the learned schedule's rate when it has one."""
        params = self.inner_params()
        lr: float | Callable[[dict[str, Tensor]], Tensor] = self.optimizer.param_groups[0]["lr"]
        if self.rate is not None:
            rate, f_live = self.rate, functional(self.rate.net.live)
            prefix = f"parts.schedule.stages.{len(self.rate.net.stages) - 1}."
            with torch.no_grad():
                batch_loss = F.cross_entropy(self._f_model(params, x), y)

            def learned_lr(h: dict[str, Tensor]) -> Tensor:
                sub = {k[len(prefix) :]: v for k, v in h.items() if k.startswith(prefix)}
                return rate.differentiable(
                    batch_loss, live=lambda loss, state: f_live(sub, loss, state)
                )

            lr = learned_lr

        step = self.meta_step
        assert step is not None
        problem = step.problem(params, self._inner_loss, self._outer_loss, lr)
        return problem, (x, y), self._outer_batch()

    def meta_hypergradient(self, x: Tensor, y: Tensor, idx: Tensor | None = None) -> PendingStep:
        """Phase one of a meta step on the batch ``(x, y)``: the hypergradient of the meta
        objective with respect to every part (:meth:`meta_problem`); nothing moves yet."""
        start = time.perf_counter()
        self.model.train()
        step = self.meta_step
        assert step is not None
        return PendingStep(step.hypergradient(*self.meta_problem(x, y)), x, y, start)

    def real_step(self, pending: PendingStep) -> dict[str, float]:
        """Phase two: the real step with the parts as they stand now (after the meta update),
        at the learned schedule's rate when the bundle has one; returns the step's ``loss``
        and ``meta_loss``."""
        x, y = pending.x, pending.y
        logits = self.forward(x)
        self._rate_input = F.cross_entropy(logits.detach(), y)
        loss = self.bundle_loss(logits, x, y, frozen_parts(self.bundle))
        self._apply_step(loss)
        self.progress.timings["meta"].append(time.perf_counter() - pending.start)
        return {"loss": float(loss.detach()), "meta_loss": pending.result.outer_loss}

    # ------------------------------------------------------------------ diagnostics

    def adjuster_values(self) -> np.ndarray:
        """The adjuster's hyperparameters for every training sample ``(n, k)``, in eval mode."""
        assert self.adjuster is not None
        groups = self.labels.class_groups
        return adjuster_values(self.adjuster, self.model, self.train_x, self.train_y, groups)

    def mean_transition(self) -> np.ndarray:
        """The transition net's mean row per clean class ``(C, C)``."""
        assert self.transition_net is not None
        return mean_transition(self.transition_net, self.train_x, self.task.train.y_true)

    def finish(self) -> TrainResult:
        """The summary adds what the parts learned (:func:`parts_summary`)."""
        result = super().finish()
        summary, extra = parts_summary(self)
        result.summary.update(summary)
        result.extra.update(extra)
        return result

    @property
    def lr_trace(self) -> list[float]:
        return self.rate.trace if self.rate is not None else []

    @property
    def stage_trace(self) -> list[tuple[int, int]]:
        return self.rate.stage_trace if self.rate is not None else []

    def record(self, result: TrainResult) -> RunRecord:
        record = super().record(result)
        if self.adjuster is not None:
            record.arrays.update(adjuster_arrays(self.adjuster))
            record.info.update(
                adjuster_names=list(self.adjuster.names), adjuster_family=self.adjuster.family
            )
        if self.transition_net is not None and self.task.transition is not None:
            record.arrays.update(
                transition_true=np.asarray(self.task.transition),
                transition_estimated=self.mean_transition(),
            )
            record.info["transition_label"] = "meta-learned (mean over samples)"
        o = self.config.optim
        record.arrays.update(
            lr_arrays(self.lr_trace, self.stage_trace, o.lr, o.epochs * self.plan.steps_per_epoch)
        )
        warmup = self.config.meta.warmup_epochs if self.meta_training else 0
        record.info.update(
            lr0=o.lr,
            steps_per_epoch=self.plan.steps_per_epoch,
            lr_warmup_steps=min(warmup, o.epochs) * self.plan.steps_per_epoch,
        )
        return record

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        out = super().state()
        if self.rate is not None:
            out["rate"] = self.rate.state()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if self.rate is not None:
            self.rate.load_state(state["rate"], self.device)


def _check_label_correction(weighting: nn.Module) -> None:
    if getattr(weighting, "label_correction", False):
        raise SlemError("CMW-Net-SL's label correction cannot join a bundle; use cmwnet")
