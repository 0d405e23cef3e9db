"""Meta-learned sample weighting: MW-Net, CMW-Net and CMW-Net-SL.

The hook into learning is ``weights = h(losses, groups)``: one weight in ``(0, 1)`` per
training sample, multiplying that sample's loss (``groups`` is optional: MW-Net ignores it,
CMW-Net then treats every sample as one of the largest classes). The trainer meta-learns
``h`` so that a step on the weighted loss lowers a trusted objective, then applies it frozen
to new tasks.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slem.methodology.base import Methodology


class MWNet(Methodology):
    """MW-Net (Shu et al., NeurIPS 2019): what it learns is how much to trust a sample given
    only its loss. A 1-hidden-layer MLP (1-100-1, ReLU, sigmoid) maps the loss to a weight;
    meta-trained on noisy labels it typically learns to down-weight large losses (likely
    mislabelled), on imbalanced data to up-weight them (likely rare classes). ``monotone``
    constrains the curve to be non-increasing in the loss (absolute values of the layer
    weights), so a rule meant for label noise can never prefer the samples a fresh model has
    not fitted yet."""

    kind: ClassVar[str] = "mwnet"
    input_features: ClassVar[tuple[str, ...]] = ("loss",)
    label_correction: ClassVar[bool] = False

    def __init__(self, hidden: int = 100, monotone: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.monotone = monotone
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "monotone": self.monotone}

    @property
    def n_groups(self) -> int:
        return 1

    def forward(self, losses: Tensor, groups: Tensor | None = None) -> Tensor:
        """Weights in (0, 1), shape ``(n,)``, one per loss in ``losses`` (shape ``(n,)``);
        ``groups`` is ignored (MW-Net is class-blind). The net reads the loss *values*
        (detached): no gradient flows through the weights into the model, so
        ``(rule(losses) * losses).mean()`` is MW-Net's weighted loss. Raw, not normalized:
        :func:`normalize_weights` rescales them as the trainer does."""
        losses = losses.detach()
        if not self.monotone:
            return torch.sigmoid(self.net(losses[:, None])).squeeze(1)
        first, last = cast(nn.Linear, self.net[0]), cast(nn.Linear, self.net[2])
        h = decreasing_trunk(losses, first.weight, first.bias)
        return torch.sigmoid(F.linear(h, last.weight.abs(), last.bias)).squeeze(1)


def decreasing_trunk(losses: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``relu(bias - |weight| * loss)``: every hidden unit is non-increasing in the loss, so
    non-negative output weights make the whole weighting net non-increasing in it."""
    return F.relu(F.linear(losses[:, None], -weight.abs(), bias))


class CMWNet(Methodology):
    """CMW-Net (Shu et al., TPAMI 2023): what it learns is how much to trust a sample given
    its loss *and the size of its class*. Classes are grouped by size (the task feature);
    a shared trunk reads the loss and one output head per size group turns it into a weight,
    so rare-class and frequent-class samples can follow different weighting curves. The
    heads are evaluated for all samples at once by indexing, with no Python loop."""

    kind: ClassVar[str] = "cmwnet"
    input_features: ClassVar[tuple[str, ...]] = ("loss", "class_group")
    label_correction: ClassVar[bool] = False

    def __init__(self, n_groups: int = 3, hidden: int = 100, monotone: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.groups = n_groups
        self.monotone = monotone
        self.trunk = nn.Sequential(nn.Linear(1, hidden), nn.ReLU())
        self.head_weight = nn.Parameter(torch.empty(n_groups, hidden))
        self.head_bias = nn.Parameter(torch.zeros(n_groups))
        bound = 1.0 / math.sqrt(hidden)  # as nn.Linear(hidden, 1) initializes
        nn.init.uniform_(self.head_weight, -bound, bound)
        nn.init.uniform_(self.head_bias, -bound, bound)

    def config(self) -> dict[str, Any]:
        return {"n_groups": self.groups, "hidden": self.hidden, "monotone": self.monotone}

    @property
    def n_groups(self) -> int:
        return self.groups

    def forward(self, losses: Tensor, groups: Tensor | None = None) -> Tensor:
        """Weights in (0, 1), shape ``(n,)``, for the loss values ``losses`` (shape ``(n,)``,
        detached as in :meth:`MWNet.forward`); ``groups[i]`` is the size group of sample i's
        class (0 = largest classes; default: all 0). Groups beyond the trained heads use the
        last head."""
        losses = losses.detach()
        if groups is None:
            groups = torch.zeros(len(losses), dtype=torch.long, device=losses.device)
        g = groups.clamp(max=self.groups - 1)
        if self.monotone:
            linear = cast(nn.Linear, self.trunk[0])
            h = decreasing_trunk(losses, linear.weight, linear.bias)
            head = self.head_weight.abs()
        else:
            h, head = self.trunk(losses[:, None]), self.head_weight
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
    kind: str, n_groups: int, hidden: int, monotone: bool = False
) -> MWNet | CMWNet:
    if kind == "mwnet":
        return MWNet(hidden=hidden, monotone=monotone)
    return WEIGHTING_KINDS[kind](n_groups=n_groups, hidden=hidden, monotone=monotone)
