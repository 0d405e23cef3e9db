"""The regression hyper-weight net (HWnet): a meta-learned loss for noisy regression targets.

The hook into learning is ``loss_i = h(r_i) ⋅ (the loss family at r_i)``: from a training
sample's residual ``r`` (prediction minus observed target, in robust target units: the
target minus its median, divided by 1.4826 ⋅ MAD) the net decides how that sample is
penalized. The trainer (:class:`slem.train.regression.HWNetTrainer`) meta-learns ``h`` so
that a step on the ``h``-set loss lowers a trusted objective (a small clean meta set, or
DAC-MR consistency), then applies it frozen to new regression tasks.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.errors import SlemError
from slem.methodology.base import Methodology

LOSS_NAMES = ("l2", "l1", "huber", "cauchy", "logcosh")
MODES = ("mix", "weight")


def base_loss(name: str, r: Tensor) -> Tensor:
    """One member of the loss family at residuals ``r`` (robust units), elementwise.

    ``l2 = r²/2``, ``l1 = |r|``, ``huber`` with delta 1, ``cauchy = log(1 + r²)``,
    ``logcosh = log(cosh r)`` (computed without overflow).
    """
    a = r.abs()
    if name == "l2":
        return 0.5 * r * r
    if name == "l1":
        return a
    if name == "huber":
        return torch.where(a <= 1.0, 0.5 * r * r, a - 0.5)
    if name == "cauchy":
        return torch.log1p(r * r)
    if name == "logcosh":
        return a + F.softplus(-2.0 * a) - math.log(2.0)
    raise SlemError(f"unknown loss '{name}'; use one of {', '.join(LOSS_NAMES)}")


def input_stats(x: Tensor) -> Tensor:
    """Per sample, the mean and the standard deviation of its (standardized) inputs: (n, 2)."""
    flat = x.reshape(len(x), -1)
    return torch.stack([flat.mean(1), flat.std(1, unbiased=False)], dim=1)


class HyperWeightNet(Methodology):
    """HWnet for regression: what it learns is *how to penalize a sample given its residual*
    (and, with ``use_inputs``, the mean and spread of its inputs).

    A small MLP (``hidden`` units, ReLU) reads ``r`` and ``|r|``, where ``r`` is the residual
    in robust target units, so that the same net transfers between targets of any scale:

    * mode ``mix``: a softmax over the K losses in ``losses`` gives mixture coefficients
      ``a_k(r)`` and the sample's loss is ``sum_k a_k(r) ⋅ loss_k(r)``. Meta-trained on
      targets with outliers it typically moves weight from ``l2`` to bounded losses
      (``cauchy``, ``l1``) as ``|r|`` grows, i.e. it learns a robust loss shape.
    * mode ``weight``: a sigmoid gives a weight in (0, 1) multiplying ``weighted_loss``
      (MW-Net for regression); the trainer normalizes the weights to mean 1 over the batch.
      The weighted loss is ``l1`` by default, not ``l2``: under ``l2`` a sample's gradient
      grows with its residual, so shifting weight to large residuals is a bigger step,
      which the one-step lookahead always wants while the model underfits; the net then
      learned to trust the outliers (weight AUC 0.29-0.65 on four tables with 30% mixture
      noise, where ``l1`` gives 0.75-0.89 on three of them).

    The net's inputs are always detached residuals: it reads the residual's value, as
    MW-Net reads the loss value. With ``signed=False`` (the trainer's default) it reads
    ``|r|`` only, so it must treat a residual and its negative alike: with the sign, the
    lookahead can steer the model by up-weighting the large residuals that point where the
    current meta batch wants the model to go.
    """

    kind: ClassVar[str] = "hwnet"
    input_features: ClassVar[tuple[str, ...]] = ("residual", "abs_residual")

    def __init__(
        self,
        mode: str = "mix",
        losses: list[str] | tuple[str, ...] = ("l2", "l1", "huber", "cauchy"),
        use_inputs: bool = False,
        hidden: int = 100,
        signed: bool = True,
        weighted_loss: str = "l2",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise SlemError(f"hwnet mode '{mode}' is unknown; use mix or weight")
        losses = list(losses)
        unknown = [name for name in losses if name not in LOSS_NAMES]
        if unknown:
            raise SlemError(
                f"hwnet losses {', '.join(unknown)} unknown; use any of {', '.join(LOSS_NAMES)}"
            )
        if mode == "mix" and not losses:
            raise SlemError("hwnet mode mix needs at least one loss in losses")
        if len(set(losses)) != len(losses):
            raise SlemError("hwnet losses lists a loss twice")
        if weighted_loss not in LOSS_NAMES:
            raise SlemError(
                f"hwnet weighted_loss '{weighted_loss}' is unknown; use one of "
                f"{', '.join(LOSS_NAMES)}"
            )
        self.weighted_loss = weighted_loss
        self.mode = mode
        self.losses = losses
        self.use_inputs = use_inputs
        self.hidden = hidden
        self.signed = signed
        n_in = (2 if signed else 1) + (2 if use_inputs else 0)
        n_out = len(losses) if mode == "mix" else 1
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

    def config(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "losses": list(self.losses),
            "use_inputs": self.use_inputs,
            "hidden": self.hidden,
            "signed": self.signed,
            "weighted_loss": self.weighted_loss,
        }

    def observed_inputs(self) -> tuple[str, ...]:
        """The residual statistics it reads, and the input statistics when it reads them."""
        extra = ("input_mean", "input_std") if self.use_inputs else ()
        return (*(self.input_features if self.signed else ("abs_residual",)), *extra)

    # ------------------------------------------------------------------ the hook

    def features(self, residuals: Tensor, stats: Tensor | None = None) -> Tensor:
        """The net's input: ``(r, |r|)`` (``|r|`` alone when not ``signed``), plus the input
        mean and std with ``use_inputs``."""
        r = residuals.reshape(-1, 1)
        cols = [r, r.abs()] if self.signed else [r.abs()]
        if self.use_inputs:
            if stats is None:
                raise SlemError(
                    "this HWnet reads the inputs' mean and std (use_inputs): pass their "
                    "input_stats(x)"
                )
            cols.append(stats.to(r.dtype))
        return torch.cat(cols, dim=1)

    def forward(self, residuals: Tensor, stats: Tensor | None = None) -> Tensor:
        """Mode mix: the (n, K) mixture coefficients (rows sum to 1); mode weight: the (n,)
        weights in (0, 1), not yet normalized. ``residuals`` should be detached."""
        out = self.net(self.features(residuals, stats))
        if self.mode == "mix":
            return torch.softmax(out, dim=1)
        return torch.sigmoid(out).squeeze(1)

    def combine(self, residuals: Tensor, out: Tensor) -> Tensor:
        """The per-sample losses at (live) ``residuals`` given this net's output ``out``
        (computed on the detached residuals, possibly with other parameters): the mixture
        ``sum_k a_k loss_k(r)``, or ``w ⋅ r²/2`` with ``w`` normalized to mean 1."""
        if self.mode == "mix":
            family = torch.stack([base_loss(name, residuals) for name in self.losses], dim=1)
            return (out * family).sum(1)
        w = out * (len(out) / out.sum().clamp_min(1e-8))
        return w * base_loss(self.weighted_loss, residuals)

    def per_sample_loss(self, residuals: Tensor, stats: Tensor | None = None) -> Tensor:
        """The per-sample losses this net sets; gradients flow to the residuals and to the
        net's parameters, never through the net's input."""
        return self.combine(residuals, self(residuals.detach(), stats))

    def curve(self, residuals: Tensor, stats: Tensor | None = None) -> Tensor:
        """For plots: the mixture coefficients (n, K) or the raw weights (n,) at given
        residuals. A net that reads input statistics sees a typical standardized sample
        (mean 0, std 1) unless ``stats`` are given."""
        if self.use_inputs and stats is None:
            stats = torch.stack([torch.zeros_like(residuals), torch.ones_like(residuals)], dim=1)
        with torch.no_grad():
            return self(residuals.detach(), stats)

    def loss_curve(self, residuals: Tensor, stats: Tensor | None = None) -> Tensor:
        """For plots: the loss the net assigns at each residual (in mode weight, the raw
        weight times ``r²/2``, unnormalized)."""
        out = self.curve(residuals, stats)
        with torch.no_grad():
            if self.mode == "mix":
                return self.combine(residuals, out)
            return out * base_loss(self.weighted_loss, residuals)
