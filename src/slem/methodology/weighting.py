"""Meta-learned sample weighting: MW-Net, CMW-Net and CMW-Net-SL.

The hook into learning is ``weights = h(features, groups)``: one weight in ``(0, 1)`` per
training sample, multiplying that sample's loss. ``features`` holds the rule's inputs, one
column each (:mod:`slem.methodology.inputs`; by default the loss alone, and a 1-D tensor of
losses is accepted then); ``groups`` is optional: MW-Net ignores it, CMW-Net then treats every
sample as one of the largest classes. The trainer meta-learns
``h`` so that a step on the weighted loss lowers a trusted objective, then applies it frozen
to new tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slem.methodology.base import Methodology
from slem.methodology.inputs import check_inputs, loss_like_mask


class MWNet(Methodology):
    """MW-Net (Shu et al., NeurIPS 2019): what it learns is how much to trust a sample given
    only its loss. A 1-hidden-layer MLP (1-100-1, ReLU, sigmoid) maps the loss to a weight;
    meta-trained on noisy labels it typically learns to down-weight large losses (likely
    mislabelled), on imbalanced data to up-weight them (likely rare classes). ``monotone``
    constrains the curve to be non-increasing in the loss (absolute values of the layer
    weights), so a rule meant for label noise can never prefer the samples a fresh model has
    not fitted yet. ``inputs``: what it reads (:data:`~slem.methodology.inputs.WEIGHT_INPUTS`;
    default the raw loss), one input column each; monotone then means non-increasing in every
    loss-like input."""

    kind: ClassVar[str] = "mwnet"
    loss_like: Tensor  # which inputs the monotone option constrains (a buffer)
    input_features: ClassVar[tuple[str, ...]] = ("loss",)
    label_correction: ClassVar[bool] = False

    def __init__(
        self, hidden: int = 100, monotone: bool = False, inputs: Sequence[str] = ("loss",)
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.monotone = monotone
        self.inputs = check_inputs(inputs)
        self.register_buffer("loss_like", loss_like_mask(self.inputs), persistent=False)
        self.net = nn.Sequential(
            nn.Linear(len(self.inputs), hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "monotone": self.monotone, **inputs_config(self.inputs)}

    def observed_inputs(self) -> tuple[str, ...]:
        return self.inputs

    @property
    def n_groups(self) -> int:
        return 1

    def forward(self, features: Tensor, groups: Tensor | None = None) -> Tensor:
        """Weights in (0, 1), shape ``(n,)``, one per row of ``features`` (shape
        ``(n, len(inputs))``, or ``(n,)`` losses for the default loss-only rule); ``groups`` is
        ignored (MW-Net is class-blind). The net reads the input *values* (detached): no
        gradient flows through the weights into the model, so ``(rule(losses) *
        losses).mean()`` is MW-Net's weighted loss. Raw, not normalized:
        :func:`normalize_weights` rescales them as the trainer does."""
        x = as_columns(features, self.inputs)
        if not self.monotone:
            return torch.sigmoid(self.net(x)).squeeze(1)
        first, last = cast(nn.Linear, self.net[0]), cast(nn.Linear, self.net[2])
        h = decreasing_trunk(x, first.weight, first.bias, self.loss_like)
        return torch.sigmoid(F.linear(h, last.weight.abs(), last.bias)).squeeze(1)


def inputs_config(inputs: tuple[str, ...]) -> dict[str, Any]:
    """The ``inputs`` constructor argument, left out for the default loss-only rule (so its
    artifacts read as before)."""
    return {} if inputs == ("loss",) else {"inputs": list(inputs)}


def as_columns(features: Tensor, inputs: tuple[str, ...]) -> Tensor:
    """``features`` detached, as ``(n, len(inputs))`` (a 1-D tensor of losses is the column of
    a loss-only rule).

    Raises:
        ValueError: the columns do not match the rule's inputs.
    """
    x = features.detach()
    if x.dim() == 1 and inputs == ("loss",):
        x = x[:, None]
    if x.dim() != 2 or x.shape[1] != len(inputs):
        raise ValueError(
            f"the rule reads the inputs {list(inputs)}, one column each; got features of shape "
            f"{tuple(features.shape)}: build them with observer = slem.methodology.inputs."
            "TaskObserver(rule.inputs, n_train, n_classes), rule(observer.features(losses, idx, "
            "progress)) in each step and observer.observe(losses, idx) after it (see "
            "examples/python/frozen_rule.py)"
        )
    return x


def decreasing_trunk(x: Tensor, weight: Tensor, bias: Tensor, loss_like: Tensor) -> Tensor:
    """``relu(bias + W x)`` with ``W = -|weight|`` on the loss-like columns of ``x`` (shape
    ``(n, d)``): every hidden unit is non-increasing in those inputs, so non-negative output
    weights make the whole weighting net non-increasing in them."""
    signed = torch.where(loss_like, -weight.abs(), weight)
    return F.relu(F.linear(x, signed, bias))


class CMWNet(Methodology):
    """CMW-Net (Shu et al., TPAMI 2023): what it learns is how much to trust a sample given
    its loss *and the size of its class*. Classes are grouped by size (the task feature);
    a shared trunk reads the loss and one output head per size group turns it into a weight,
    so rare-class and frequent-class samples can follow different weighting curves. The
    heads are evaluated for all samples at once by indexing, with no Python loop."""

    kind: ClassVar[str] = "cmwnet"
    loss_like: Tensor  # which inputs the monotone option constrains (a buffer)
    input_features: ClassVar[tuple[str, ...]] = ("loss", "class_group")
    label_correction: ClassVar[bool] = False

    def __init__(
        self,
        n_groups: int = 3,
        hidden: int = 100,
        monotone: bool = False,
        inputs: Sequence[str] = ("loss",),
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.groups = n_groups
        self.monotone = monotone
        self.inputs = check_inputs(inputs)
        self.register_buffer("loss_like", loss_like_mask(self.inputs), persistent=False)
        self.trunk = nn.Sequential(nn.Linear(len(self.inputs), hidden), nn.ReLU())
        self.head_weight = nn.Parameter(torch.empty(n_groups, hidden))
        self.head_bias = nn.Parameter(torch.zeros(n_groups))
        bound = 1.0 / math.sqrt(hidden)  # as nn.Linear(hidden, 1) initializes
        nn.init.uniform_(self.head_weight, -bound, bound)
        nn.init.uniform_(self.head_bias, -bound, bound)

    def config(self) -> dict[str, Any]:
        return {
            "n_groups": self.groups,
            "hidden": self.hidden,
            "monotone": self.monotone,
            **inputs_config(self.inputs),
        }

    def observed_inputs(self) -> tuple[str, ...]:
        return (*self.inputs, "class_group")

    @property
    def n_groups(self) -> int:
        return self.groups

    def forward(self, features: Tensor, groups: Tensor | None = None) -> Tensor:
        """Weights in (0, 1), shape ``(n,)``, for the inputs ``features`` (shape ``(n,
        len(inputs))``, or ``(n,)`` losses; detached as in :meth:`MWNet.forward`);
        ``groups[i]`` is the size group of sample i's class (0 = largest classes; default: all
        0). Groups beyond the trained heads use the last head."""
        x = as_columns(features, self.inputs)
        if groups is None:
            groups = torch.zeros(len(x), dtype=torch.long, device=x.device)
        g = groups.clamp(max=self.groups - 1)
        if self.monotone:
            linear = cast(nn.Linear, self.trunk[0])
            h = decreasing_trunk(x, linear.weight, linear.bias, self.loss_like)
            head = self.head_weight.abs()
        else:
            h, head = self.trunk(x), self.head_weight
        return torch.sigmoid((h * head[g]).sum(1) + self.head_bias[g])


class CMWNetSL(CMWNet):
    """CMW-Net-SL (Shu et al., TPAMI 2023): CMW-Net plus label correction. What it learns is
    the same class-aware weight, now also used to *mix labels*: a sample's loss is
    ``w * loss(given label) + (1 - w) * loss(pseudo-label)``, where the pseudo-label comes from
    a slowly updated (EMA) copy of the model. A trusted sample keeps its label; a sample the
    net distrusts learns from the model's own, smoothed belief instead."""

    kind: ClassVar[str] = "cmwnet_sl"
    label_correction: ClassVar[bool] = True


def normalize_weights(
    weights: Tensor, mode: str = "batch", labels: Tensor | None = None, n_classes: int = 0
) -> Tensor:
    """Rescale a batch's weights (shape ``(n,)``) as MW-Net's trainer does before they multiply
    the per-sample losses.

    ``batch`` (MW-Net): to mean 1 over the batch, so the weighted loss has the scale of the
    plain mean loss whatever the net's overall level. ``class``: to mean 1 within each given
    label (``labels``, shape ``(n,)``, values in ``0..n_classes-1``), so a class whose samples
    all have high losses keeps its share of the step. ``none``: unchanged, in ``(0, 1)``.

    Raises:
        ValueError: an unknown ``mode``, or ``class`` without ``labels`` and ``n_classes``.
    """
    if mode == "none":
        return weights
    if mode == "batch":
        return weights * (len(weights) / weights.sum().clamp_min(1e-8))
    if mode != "class":
        raise ValueError(f"normalization must be batch, class or none, not {mode!r}")
    if labels is None or n_classes < 1:
        raise ValueError("class normalization needs the labels and the number of classes")
    totals = torch.zeros(n_classes, dtype=weights.dtype, device=weights.device).index_add(
        0, labels, weights
    )
    counts = torch.bincount(labels, minlength=n_classes).to(weights.dtype)
    return weights * (counts / totals.clamp_min(1e-8))[labels]


WEIGHTING_KINDS = {"mwnet": MWNet, "cmwnet": CMWNet, "cmwnet_sl": CMWNetSL}


def build_weighting(
    kind: str,
    n_groups: int,
    hidden: int,
    monotone: bool = False,
    inputs: Sequence[str] = ("loss",),
) -> MWNet | CMWNet:
    """An untrained weighting net of ``kind`` (``mwnet``, ``cmwnet``, ``cmwnet_sl``)."""
    if kind == "mwnet":
        return MWNet(hidden=hidden, monotone=monotone, inputs=inputs)
    return WEIGHTING_KINDS[kind](n_groups=n_groups, hidden=hidden, monotone=monotone, inputs=inputs)
