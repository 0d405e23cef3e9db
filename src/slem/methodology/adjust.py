"""Meta-learned loss setting and model adjustment for classification.

* :class:`LossAdjusterNet` sets the robust loss of each sample: from the sample's logit margin
  and loss (and its class-size group) to that sample's GCE ``q`` or SCE ``(alpha, beta)``.
* :class:`TransitionNet` adjusts the model: it predicts, from a sample's input, the
  label-noise transition matrix ``T(x)`` (``T[i, j] = P(noisy label j | clean class i, x)``)
  that corrects the classifier's output in the noisy-label loss (forward correction). Test-time
  prediction uses the uncorrected classifier.

Both are meta-learned by the bilevel engine against a trusted objective (a clean meta set, or
DAC-MR consistency without one), then applied frozen.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.errors import SlemError
from slem.methodology.base import Methodology

Family = Literal["gce", "sce"]

#: each family's hyperparameters: name -> (low, high, hand-set default the net starts from)
FAMILIES: dict[str, dict[str, tuple[float, float, float]]] = {
    "gce": {"q": (0.05, 1.0, 0.7)},
    "sce": {"alpha": (0.0, 1.0, 0.1), "beta": (0.0, 2.0, 1.0)},
}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class LossAdjusterNet(Methodology):
    """Meta loss adjuster: what it learns is *which robust loss suits each sample*. A sample
    the model already fits (large margin, small loss) and one it contradicts (negative margin,
    large loss: likely mislabelled) get different GCE ``q`` (near 0: cross-entropy, which
    learns fast; near 1: MAE, which ignores outliers) or SCE weights. As in CMW-Net, a shared
    trunk feeds one head per class-size group, evaluated for all samples at once; every head
    starts at the hand-set default (GCE q = 0.7; SCE alpha 0.1, beta 1)."""

    kind: ClassVar[str] = "loss_adjuster"
    input_features: ClassVar[tuple[str, ...]] = ("logit_margin", "loss", "class_group")

    def __init__(self, family: Family = "gce", n_groups: int = 3, hidden: int = 64) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise SlemError(f"loss family '{family}' is unknown; use one of {', '.join(FAMILIES)}")
        self.family = family
        self.groups = n_groups
        self.hidden = hidden
        spec = FAMILIES[family]
        self.trunk = nn.Sequential(nn.Linear(2, hidden), nn.Tanh())
        self.head_weight = nn.Parameter(torch.zeros(n_groups, hidden, len(spec)))
        start = [_logit((d - lo) / (hi - lo)) for lo, hi, d in spec.values()]
        self.head_bias = nn.Parameter(torch.tensor([start] * n_groups, dtype=torch.float32))
        nn.init.normal_(self.head_weight, std=0.03 / math.sqrt(hidden))
        bounds = torch.tensor([[lo, hi] for lo, hi, _ in spec.values()], dtype=torch.float32)
        self.register_buffer("bounds", bounds, persistent=False)

    def config(self) -> dict[str, Any]:
        return {"family": self.family, "n_groups": self.groups, "hidden": self.hidden}

    @property
    def n_groups(self) -> int:
        return self.groups

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(FAMILIES[self.family])

    def forward(self, margin: Tensor, loss: Tensor, groups: Tensor | None = None) -> Tensor:
        """``(n, k)`` hyperparameters, column j in its family's range; ``margin`` and ``loss``
        are per-sample and detached (the net reads their values, as MW-Net reads the loss)."""
        feats = torch.stack([margin.clamp(-20, 20) / 5.0, loss.clamp(max=20) / 5.0], dim=1)
        h = self.trunk(feats)
        if groups is None:
            groups = torch.zeros(len(loss), dtype=torch.long, device=loss.device)
        g = groups.clamp(max=self.groups - 1)
        raw = torch.einsum("nh,nhk->nk", h, self.head_weight[g]) + self.head_bias[g]
        bounds = self.get_buffer("bounds")
        lo, hi = bounds[:, 0], bounds[:, 1]
        return lo + (hi - lo) * torch.sigmoid(raw)


def adjusted_loss(probs: Tensor, y: Tensor, family: str, hyper: Tensor) -> Tensor:
    """The per-sample robust loss of ``family`` on class probabilities ``probs``, with
    per-sample hyperparameters ``hyper`` (``(n, k)``, as :class:`LossAdjusterNet` returns)."""
    p_y = probs.gather(1, y[:, None]).squeeze(1).clamp(1e-7, 1.0)
    if family == "gce":
        q = hyper[:, 0]
        return (1.0 - p_y**q) / q
    if family == "sce":
        rce = -math.log(1e-4) * (1.0 - p_y)
        return hyper[:, 0] * -p_y.log() + hyper[:, 1] * rce
    raise SlemError(f"loss family '{family}' is unknown; use one of {', '.join(FAMILIES)}")


class TransitionNet(Methodology):
    """Meta-learned noise transition: what it learns is *how labels get corrupted, sample by
    sample*. From a sample's (standardized, flattened) input an MLP predicts a row-stochastic
    ``C x C`` matrix ``T(x)``; the noisy-label loss then scores ``p(x) T(x)``, the classifier's
    belief pushed through the corruption, so the classifier itself can stay clean. It starts at
    ``init_diagonal`` on the diagonal and the rest spread evenly."""

    kind: ClassVar[str] = "transition"
    input_features: ClassVar[tuple[str, ...]] = ("inputs",)

    def __init__(
        self, n_inputs: int, n_classes: int, hidden: int = 64, init_diagonal: float = 0.8
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise SlemError(f"a transition network needs at least 2 classes, not {n_classes}")
        if not 0.0 < init_diagonal < 1.0:
            raise SlemError(f"init_diagonal {init_diagonal} must lie in (0, 1)")
        self.n_inputs, self.n_classes = n_inputs, n_classes
        self.hidden, self.init_diagonal = hidden, init_diagonal
        self.net = nn.Sequential(
            nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, n_classes * n_classes)
        )
        last = self.net[2]
        assert isinstance(last, nn.Linear)
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)
        off = math.log((1.0 - init_diagonal) / (n_classes - 1))
        base = torch.full((n_classes, n_classes), off)
        base.fill_diagonal_(math.log(init_diagonal))
        self.base = nn.Parameter(base)

    def config(self) -> dict[str, Any]:
        return {
            "n_inputs": self.n_inputs,
            "n_classes": self.n_classes,
            "hidden": self.hidden,
            "init_diagonal": self.init_diagonal,
        }

    def check_task(self, n_inputs: int, n_classes: int) -> None:
        """A clear error when this net was built for a different number of classes or inputs."""
        if n_classes != self.n_classes:
            raise SlemError(
                f"the transition network predicts {self.n_classes}x{self.n_classes} matrices but "
                f"the data has {n_classes} classes; meta-learn one on a {n_classes}-class task"
            )
        if n_inputs != self.n_inputs:
            raise SlemError(
                f"the transition network reads {self.n_inputs} input features but the data has "
                f"{n_inputs}; meta-learn one on data of this shape"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``(n, C, C)`` row-stochastic transition matrices for the inputs ``x``."""
        c = self.n_classes
        logits = self.net(x.reshape(len(x), -1)).reshape(-1, c, c) + self.base
        return F.softmax(logits, dim=2)


def forward_corrected(probs: Tensor, transition: Tensor) -> Tensor:
    """The noisy-label distribution ``p T``: ``probs`` ``(n, C)``; ``transition`` ``(C, C)`` or
    per sample ``(n, C, C)``."""
    if transition.dim() == 2:
        return probs @ transition
    return torch.bmm(probs[:, None, :], transition).squeeze(1)
