"""Meta-learned sample weighting inside your own training loop.

:class:`MetaWeighting` adds MW-Net / CMW-Net to a loop you already have (your model, your
optimizer, your data loaders); the only change to the loop is where the loss comes from::

    from slem.train import MetaWeighting

    weighting = MetaWeighting(model, optimizer, meta=(x_meta, y_meta))  # a small clean set
    for x, y in loader:
        loss = weighting.step(x, y)        # was: loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weighting.save("my_rule")              # the learned rule, for slem apply / load_frozen

Each :meth:`MetaWeighting.step` is MetaTrainer's meta step: a
:class:`~slem.bilevel.WeightedProblem` over the batch, whose virtual step is the step your
optimizer will take (SGD with momentum, Nesterov and weight decay, or Adam(W) with its
moments; only trainable parameters move), the hypergradient of the meta loss by
``hypergrad`` (the lookahead fast path by default), a step of the weighting net, and then
the weighted loss of the batch with the updated weights, reusing the meta step's forward pass.
A frozen rule needs no meta set at all: ``rule = slem.methodology.load_frozen(path)``, then
``weights = normalize_weights(rule(losses))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import Hypergrad, PerSample, functional, replay_randomness, same_randomness
from slem.bilevel.fast import inner_value, weight_input
from slem.bilevel.head import HeadSplit
from slem.bilevel.problem import as_params
from slem.data.task import group_by_size
from slem.errors import SlemError
from slem.methodology.inputs import TaskObserver
from slem.methodology.weighting import CMWNet, MWNet, normalize_weights
from slem.train.artifacts import save_methodology
from slem.train.config import TrainConfig, parse_train_config
from slem.train.guard import NonFiniteLoss
from slem.train.hooks import new_weighting
from slem.train.meta_step import MetaStep
from slem.train.validity import check_methodology

#: a per-sample loss: (model output, targets) -> losses of shape (n,)
LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy, shape ``(n,)``: the default loss of :class:`MetaWeighting`."""
    return F.cross_entropy(logits, y, reduction="none")


class MetaWeighting:
    """Meta-learn a sample-weighting rule (MW-Net or CMW-Net) while your loop trains.

    Args:
        model: your ``nn.Module``; its trainable parameters are the inner parameters.
        optimizer: your ``torch.optim`` optimizer of ``model`` (SGD, Adam or AdamW; any
            other with ``virtual_step="sgd"``). Its rate is read at every step, so your
            scheduler applies.
        meta: the trusted meta set: ``(x_meta, y_meta)`` (arrays or tensors; each meta step
            draws ``batch_size`` of them) or an iterable of ``(x, y)`` batches such as a
            ``DataLoader`` (cycled).
        methodology: ``"mwnet"`` (weight from the loss), ``"cmwnet"`` (from the loss and the
            class's size group: give ``class_counts``) or a ``MWNet`` / ``CMWNet`` to go on
            training.
        loss_fn: the per-sample loss ``(output, y) -> (n,)`` (default: cross-entropy); the
            meta loss is its mean on a meta batch.
        class_counts: training samples per class (CMW-Net's size groups, and the ``auto``
            normalization); optional for MW-Net.
        seed: seeds the weighting net's initialization and the meta batches.
        **options: fields of the ``meta`` config section (:class:`~slem.train.MetaConfig`),
            e.g. ``lr`` (1e-3), ``hypergrad`` (``lookahead``), ``interval`` (a meta step every
            k steps), ``batch_size`` (100), ``normalize_weights``, ``virtual_step``,
            ``hidden``, ``monotone``, ``scope`` (``"head"``: the layer subset, whose
            virtual step moves only the model's output layer; the model's forward must end
            in it). The fast mode here is ``interval`` (e.g. 7); ``order`` is refused (the
            plug-in's real step is yours, after the rule's update). ``normalize_weights``
            ``auto`` is ``batch`` (weights of mean 1 in the batch, as MW-Net) unless
            ``class_counts`` show balanced classes, where it is
            ``class`` (as the trainer).

    Raises:
        SlemError: an unknown option or bad value (one line naming it), a methodology or
            optimizer it cannot follow, a meta set of the wrong form.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        meta: tuple[Any, Any] | Iterable[tuple[Any, Any]],
        methodology: str | MWNet | CMWNet = "mwnet",
        *,
        loss_fn: LossFn = cross_entropy,
        class_counts: Sequence[int] | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.seed = seed
        kind = methodology if isinstance(methodology, str) else methodology.kind
        self.config = _config(kind, optimizer, options, seed)
        cfg = self.config.meta
        self.device = next(model.parameters()).device
        if isinstance(methodology, str):
            with torch.random.fork_rng(devices=[]):  # as MetaTrainer seeds its methodology
                torch.manual_seed(seed + 1_000_003)
                methodology = new_weighting(kind, cfg)
        self.methodology: MWNet | CMWNet = methodology.to(self.device)
        if isinstance(self.methodology, CMWNet) and class_counts is None:
            raise SlemError(
                f"a {self.methodology.kind} rule weighs each class size group apart: give "
                "class_counts=[training samples per class], or use methodology='mwnet'"
            )
        unread = [n for n in self.methodology.inputs if n not in BATCH_INPUTS]
        if unread:
            raise SlemError(
                f"MetaWeighting sees one batch at a time and cannot give the inputs {unread}; "
                f"use {', '.join(BATCH_INPUTS)}, or slem train for the others"
            )
        self.observer = TaskObserver(self.methodology.inputs, 0, 1)
        check_methodology(self.config, sum(p.numel() for p in self.methodology.parameters()))
        self.meta_step = MetaStep(
            cfg, optimizer, dict(self.methodology.named_parameters()), self._check_finite
        )
        self.meta_optimizer = self.meta_step.meta_optimizer
        self.n_classes = len(class_counts) if class_counts is not None else 0
        self.class_groups: Tensor | None = None
        if class_counts is not None:
            groups = group_by_size(np.asarray(class_counts), cfg.n_groups)
            self.class_groups = torch.as_tensor(groups, dtype=torch.long, device=self.device)
        self.normalization = _normalization(cfg.normalize_weights, class_counts)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._meta = _MetaSource(meta, self.device, cfg.batch_size, self.generator)
        self._f_model = functional(model)
        self._f_meth = functional(self.methodology)
        # scope head (the layer subset): the meta step's problem is the output layer on features
        self._head = HeadSplit(model) if cfg.scope == "head" else None
        if self._head is not None:
            self._head.head_params(as_params(model, "params"))
        self._net: Any = self._head.head if self._head is not None else self._f_model
        self.steps = 0
        self.meta_steps = 0
        #: the last batch's weights, shape (n,), detached
        self.weights: Tensor | None = None
        #: the meta loss of the last meta step (before the net's update)
        self.meta_loss: float | None = None

    # ------------------------------------------------------------------ the step

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """A meta step on the batch ``(x, y)`` (every ``interval`` calls), then the batch's
        weighted loss ``mean(w * loss_fn(model(x), y))`` with the updated weights: a scalar
        with its graph, for your ``loss.backward()`` and ``optimizer.step()``.

        Call it in training mode, once per batch, before your optimizer steps (the virtual
        step reads the optimizer's current state). ``weights`` holds the batch's weights.

        Raises:
            NonFiniteLoss: the hypergradient or the loss became NaN or infinite.
        """
        x, y = x.to(self.device), y.to(self.device)
        with same_randomness():  # the real forward sees the meta step's dropout masks
            terms: PerSample | None = None
            if self.steps % self.config.meta.interval == 0:
                terms = self._meta_step(x, y)
            self.steps += 1
            if terms is None:
                replay_randomness()
                terms = PerSample(self.loss_fn(self.model(x), y))
        with torch.no_grad():
            w = self.weigh(weight_input(terms), y)
        self.weights = w
        loss = inner_value(terms, w)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteLoss(
                f"the weighted loss became {float(loss)} at step {self.steps}; lower your "
                "optimizer's learning rate"
            )
        return loss

    def weigh(self, losses: Tensor, y: Tensor | None = None) -> Tensor:
        """The current rule's weights of the loss values ``losses`` (shape ``(n,)``) of samples
        labelled ``y``, normalized as ``normalize_weights`` says; no meta step."""
        raw = self.methodology(self.observer.features(losses, None), self._groups(y))
        return self._normalize(raw, y)

    def _meta_step(self, x: Tensor, y: Tensor) -> PerSample | None:
        step = self.meta_step
        params = as_params(self.model, "params")
        meta_batch = _like_training(self._meta.next(), x, y)
        terms: PerSample | None = None
        if self._head is not None:  # the real forward, its features, the meta batch's
            replay_randomness()
            out, features = self._head.run(self.model, x)
            terms = PerSample(self.loss_fn(out, y))
            meta_batch = (self._head.features(self._f_model, params, meta_batch[0]), meta_batch[1])
            params, x = self._head.head_params(params), features.detach()
        problem = step.weighted_problem(params, self._per_sample, self._weights, self._outer_loss)
        keep = step.fast and terms is None
        result = step.hypergradient(
            problem, (x, y), meta_batch, keep_graph=keep, live_forward=self._head is None
        )
        self._check(result)
        step.update(result)
        self.meta_steps += 1
        self.meta_loss = result.outer_loss
        return terms if terms is not None else result.diagnostics.get("losses") if keep else None

    def _check_finite(self, value: Tensor, what: str) -> None:
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteLoss(
                f"the {what} of meta step {self.meta_steps + 1} became non-finite; lower your "
                "optimizer's learning rate or the rule's lr"
            )

    def _check(self, result: Hypergrad) -> None:
        if not math.isfinite(result.outer_loss):
            raise NonFiniteLoss(
                f"the meta step {self.meta_steps + 1} became non-finite (meta loss "
                f"{result.outer_loss}); lower your optimizer's learning rate or the rule's lr"
            )

    # ------------------------------------------------------------------ engine callables

    def _per_sample(self, params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return self.loss_fn(self._net(params, x), y)

    def _weights(
        self, hyper: dict[str, Tensor], losses: Tensor, batch: tuple[Tensor, Tensor]
    ) -> Tensor:
        y = batch[1]
        inputs = self.observer.features(losses, None)
        return self._normalize(self._f_meth(hyper, inputs, self._groups(y)), y)

    def _outer_loss(
        self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: tuple[Tensor, Tensor]
    ) -> Tensor:
        x, y = batch
        return self.loss_fn(self._net(params, x), y).mean()

    def _groups(self, y: Tensor | None) -> Tensor | None:
        if self.class_groups is None or y is None:
            return None
        return self.class_groups[y]

    def _normalize(self, w: Tensor, y: Tensor | None) -> Tensor:
        if self.normalization == "class" and y is None:
            return normalize_weights(w, "batch")
        return normalize_weights(w, self.normalization, y, self.n_classes)

    # ------------------------------------------------------------------ state

    def save(self, directory: str | Path, **trained_on: Any) -> Path:
        """Write the learned rule as a methodology artifact (for ``slem apply``,
        :func:`slem.train.apply` and :func:`slem.methodology.load_frozen`); ``trained_on``
        adds fields to its ``meta_trained_on`` (e.g. ``dataset="my data"``).

        Raises:
            SlemError: ``directory`` cannot be written.
        """
        on = {"steps": self.steps, "meta_steps": self.meta_steps, "seed": self.seed, **trained_on}
        return save_methodology(self.methodology, directory, self.config, trained_on=on)

    def state_dict(self) -> dict[str, Any]:
        """The rule, its optimizer, the step counts and the meta-batch generator: with your
        model's and optimizer's state, what a checkpoint of your loop needs."""
        return {
            "methodology": self.methodology.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "steps": self.steps,
            "meta_steps": self.meta_steps,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.methodology.load_state_dict(state["methodology"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.steps, self.meta_steps = int(state["steps"]), int(state["meta_steps"])
        self.generator.set_state(state["generator"].cpu())


#: the inputs a rule can read from one batch alone (:mod:`slem.methodology.inputs`)
BATCH_INPUTS = ("loss", "loss_ratio", "loss_rank")


def _config(
    kind: str, optimizer: torch.optim.Optimizer, options: dict[str, Any], seed: int
) -> TrainConfig:
    """A training config that records the setting (it is the artifact's
    ``training_config``) and runs the validity checks of ``slem train``."""
    if kind not in ("mwnet", "cmwnet"):
        raise SlemError(
            f"MetaWeighting learns methodology mwnet or cmwnet, not {kind!r} (cmwnet_sl "
            "needs a teacher model: use slem train)"
        )
    if options.get("order", "mwnet") != "mwnet":
        raise SlemError(
            "MetaWeighting takes the real step you take, after the rule's update: drop order "
            "(for a cheaper meta step use interval, e.g. interval=7)"
        )
    if options.get("objective", "clean") != "clean":
        raise SlemError("MetaWeighting's meta objective is the meta set's loss: drop objective")
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        optim: dict[str, Any] = {"optimizer": "adam"}
    elif isinstance(optimizer, torch.optim.SGD):
        optim = {
            "optimizer": "sgd",
            "momentum": float(group["momentum"]),
            "nesterov": bool(group["nesterov"]),
        }
    elif options.get("virtual_step") == "sgd":
        optim = {"optimizer": "sgd", "momentum": 0.0}
    else:
        raise SlemError(
            f"MetaWeighting's virtual step follows torch.optim.SGD, Adam and AdamW, not "
            f"{type(optimizer).__name__}; use one of them, or virtual_step='sgd' (the plain "
            "step of the MW-Net code)"
        )
    optim.update(lr=float(group["lr"]), weight_decay=float(group["weight_decay"]))
    values = {"method": kind, "optim": optim, "meta": dict(options), "seed": seed}
    return parse_train_config(values)


def _normalization(mode: str, class_counts: Sequence[int] | None) -> str:
    if mode != "auto":
        if mode == "class" and class_counts is None:
            raise SlemError("normalize_weights='class' needs class_counts (samples per class)")
        return mode
    if class_counts is None:
        return "batch"
    counts = [c for c in class_counts if c > 0]
    return "batch" if counts and max(counts) >= 3 * min(counts) else "class"


class _MetaSource:
    """Meta batches from ``(x, y)`` tensors (random draws) or an iterable of batches."""

    def __init__(
        self,
        meta: tuple[Any, Any] | Iterable[tuple[Any, Any]],
        device: torch.device,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        self.device = device
        self.batch_size = batch_size
        self.generator = generator
        self.pool: tuple[Tensor, Tensor] | None = None
        self.batches: Iterable[tuple[Any, Any]] | None = None
        self._it: Iterator[tuple[Any, Any]] | None = None
        if isinstance(meta, tuple | list) and len(meta) == 2 and _is_array(meta[0]):
            x, y = (_tensor(v, device) for v in meta)
            if len(x) != len(y) or len(x) == 0:
                raise SlemError(
                    f"meta: x_meta has {len(x)} rows and y_meta {len(y)}; give one label per "
                    "row, at least one row"
                )
            self.pool = (x, y)
        elif isinstance(meta, Iterable):
            self.batches = meta
        else:
            raise SlemError(
                "meta must be (x_meta, y_meta) arrays or tensors, or an iterable of (x, y) "
                f"batches such as a DataLoader, not {type(meta).__name__}"
            )

    def next(self) -> tuple[Tensor, Tensor]:
        if self.pool is not None:
            x, y = self.pool
            take = torch.randperm(len(y), generator=self.generator)[: self.batch_size]
            take = take.to(self.device)
            return x[take], y[take]
        assert self.batches is not None
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.batches)
            try:
                xb, yb = next(self._it)
                return _tensor(xb, self.device), _tensor(yb, self.device)
            except StopIteration:
                self._it = None
        raise SlemError("meta: the iterable of meta batches is empty")


def _like_training(meta: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The meta batch checked against the training batch ``(x, y)``: the same features per
    row, and labels of the same kind (float class indices, as pandas or numpy give them, are
    taken as integers when the training labels are integers).

    Raises:
        SlemError: the features or the label kind differ (one line saying which).
    """
    xm, ym = meta
    if xm.shape[1:] != x.shape[1:]:
        raise SlemError(
            f"meta: inputs of shape {tuple(xm.shape[1:])} per row, but the training batch's "
            f"are {tuple(x.shape[1:])}; give meta inputs with the training inputs' features"
        )
    if ym.is_floating_point() and not y.is_floating_point():
        if not bool(torch.all(ym == ym.round())):
            raise SlemError(
                f"meta: labels are fractional ({ym.dtype}) but the training labels are class "
                f"indices ({y.dtype}); give the meta set's class indices"
            )
        ym = ym.to(y.dtype)
    elif y.is_floating_point() != ym.is_floating_point() or ym.shape[1:] != y.shape[1:]:
        raise SlemError(
            f"meta: labels of dtype {ym.dtype} and shape {tuple(ym.shape[1:])} per row, but "
            f"the training labels are {y.dtype} of shape {tuple(y.shape[1:])}; give meta "
            "labels like the training labels"
        )
    return xm, ym


def _is_array(value: Any) -> bool:
    return isinstance(value, Tensor | np.ndarray)


def _tensor(value: Any, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device)
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating):
        return torch.as_tensor(array, dtype=torch.float32, device=device)
    return torch.as_tensor(array, dtype=torch.long, device=device)
