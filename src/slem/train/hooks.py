"""How a sample-weighting methodology enters learning: :class:`SampleWeights`.

A weighting net ``h(loss, class group)`` (MW-Net, Shu et al. 2019; CMW-Net, Shu et al. 2023)
sets the weight of every sample's loss in the training step, ``mean(w * l)``, normalized as
``meta.normalize_weights`` says; with label correction (CMW-Net-SL) the weight splits each
sample's loss between its given label and an EMA teacher's pseudo-label. The trainers (frozen
or meta-learned rule) and the plug-in use the same object.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from slem.bilevel import PerSample
from slem.bilevel.fast import inner_value, weight_input
from slem.methodology.weighting import CMWNet, MWNet
from slem.train.config import MetaConfig
from slem.train.objective import Classification
from slem.train.teacher import Teacher, weighted_terms

#: a weighting net as a function: (losses (n,), class groups (n,)) -> raw weights (n,)
Rule = Callable[[Tensor, Tensor], Tensor]


class SampleWeights:
    """The sample weights of a weighting net.

    Args:
        net: the weighting net (MW-Net or CMW-Net, CMW-Net-SL for label correction).
        objective: the classification objective (class groups, normalization, prior).
        model: the model being trained (the label-correction teacher starts as its copy).
        meta: the teacher's settings (``ema_decay``, ``sl_temperature``, ...).
    """

    def __init__(
        self, net: MWNet | CMWNet, objective: Classification, model: nn.Module, meta: MetaConfig
    ) -> None:
        self.net = net
        self.objective = objective
        self.label_correction = bool(getattr(net, "label_correction", False))
        self.teacher = Teacher(model, meta, objective.log_prior) if self.label_correction else None

    def pseudo_labels(self, x: Tensor) -> Tensor | None:
        """CMW-Net-SL's soft pseudo-labels ``(n, C)`` of ``x`` (None without correction)."""
        return self.teacher.pseudo_labels(x) if self.teacher is not None else None

    def terms(self, logits: Tensor, y: Tensor, pseudo: Tensor | None) -> PerSample:
        """The per-sample terms the weights multiply (see :func:`weighted_terms`)."""
        return weighted_terms(logits, y, pseudo)

    def weights(self, losses: Tensor, y: Tensor, rule: Rule | None = None) -> Tensor:
        """The normalized weights ``(n,)`` of per-sample ``losses`` of labels ``y``; ``rule``:
        the net as a function of its parameters (meta steps), default the net itself."""
        raw = (rule or self.net)(losses, self.objective.class_groups[y])
        return self.normalized(raw, y)

    def normalized(self, w: Tensor, y: Tensor) -> Tensor:
        """``w`` normalized as ``meta.normalize_weights`` says; never under label correction,
        where ``w`` mixes two labels and stays in (0, 1)."""
        return w if self.label_correction else self.objective.normalized(w, y)

    def loss(self, terms: PerSample, y: Tensor) -> Tensor:
        """The real step's loss ``mean(w * l)`` (plus the unweighted pseudo-label part), the
        weights held constant."""
        with torch.no_grad():
            w = self.weights(weight_input(terms), y)
        return inner_value(terms, w)

    def after_step(self, model: nn.Module, step: int) -> None:
        """After each real step: the EMA teacher follows the model."""
        if self.teacher is not None:
            self.teacher.update(model, step)

    def train_weights(self, model: nn.Module, x: Tensor, y: Tensor) -> np.ndarray:
        """The net's (unnormalized) weight ``(n,)`` of every training sample, in eval mode."""
        losses = self.objective.eval_losses(model, x, y)
        with torch.no_grad():
            w = self.net(losses, self.objective.class_groups[y])
        return w.cpu().numpy()
