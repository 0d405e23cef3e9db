"""Meta-learned sample weighting: MW-Net, CMW-Net and CMW-Net-SL.

The hook into learning is ``weights = h(losses, groups)``: one weight in ``(0, 1)`` per
training sample, multiplying that sample's loss. The trainer meta-learns ``h`` so that a step
on the weighted loss lowers a trusted objective, then applies it frozen to new tasks.
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
        """Weights in (0, 1), one per loss; ``groups`` is ignored (MW-Net is class-blind)."""
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
        """Weights in (0, 1); ``groups[i]`` is the size group of sample i's class (0 =
        largest classes). Groups beyond the trained heads use the last head."""
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


WEIGHTING_KINDS = {"mwnet": MWNet, "cmwnet": CMWNet, "cmwnet_sl": CMWNetSL}


def build_weighting(
    kind: str, n_groups: int, hidden: int, monotone: bool = False
) -> MWNet | CMWNet:
    if kind == "mwnet":
        return MWNet(hidden=hidden, monotone=monotone)
    return WEIGHTING_KINDS[kind](n_groups=n_groups, hidden=hidden, monotone=monotone)
