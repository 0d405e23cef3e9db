"""Label correction (CMW-Net-SL, Shu et al. 2023, Sec. 4.3): an EMA teacher of the model whose
sharpened, prior-adjusted predictions are the pseudo-labels the methodology mixes with the
given labels."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import PerSample
from slem.data.task import Split
from slem.train import losses as L
from slem.train.config import MetaConfig

EVAL_BATCH = 1024


class Teacher:
    """The EMA teacher of ``model`` (a frozen copy, updated after every real step).

    Args:
        model: the student; the teacher starts as its copy.
        meta: ``ema_decay``, ``sl_temperature`` (sharpening) and ``sl_prior_correction``.
        log_prior: ``(C,)`` log of the observed class frequencies.
    """

    def __init__(self, model: nn.Module, meta: MetaConfig, log_prior: Tensor) -> None:
        self.net = copy.deepcopy(model)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.meta = meta
        self.log_prior = log_prior

    def pseudo_labels(self, x: Tensor) -> Tensor:
        """``(n, C)`` soft pseudo-labels: softmax of the teacher's logits (minus the log prior
        when ``sl_prior_correction``) at temperature ``sl_temperature``."""
        self.net.eval()
        with torch.no_grad():
            logits = self.net(x)
            if self.meta.sl_prior_correction:
                logits = logits - self.log_prior
            return F.softmax(logits / self.meta.sl_temperature, dim=1)

    def update(self, model: nn.Module, step: int) -> None:
        """EMA of the model's weights, with the decay ramped up as ``t / (t + 1)`` over the
        first steps (as in mean teacher): a plain EMA from step 0 averages the random
        initialization into the teacher for hundreds of steps, while its BatchNorm statistics
        are the current model's, and its pseudo-labels are then worse than the noisy labels."""
        decay = min(self.meta.ema_decay, step / (step + 1))
        with torch.no_grad():
            for t, s in zip(self.net.parameters(), model.parameters(), strict=True):
                t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
            for tb, sb in zip(self.net.buffers(), model.buffers(), strict=True):
                tb.copy_(sb)

    def metrics(self, x: Tensor, split: Split) -> dict[str, float | None]:
        """How the pseudo-labels of the training inputs ``x`` relate to the true labels
        (analysis only): on noisy samples, the share they correct (``pseudo_correct_noisy``)
        and the share that repeat the wrong given label (``pseudo_keeps_noise``); on clean
        samples, the share they would corrupt (``pseudo_wrong_clean``)."""
        predicted = [
            self.pseudo_labels(x[i : i + EVAL_BATCH]).argmax(1)
            for i in range(0, len(x), EVAL_BATCH)
        ]
        pseudo = torch.cat(predicted).cpu().numpy()
        noisy = split.noisy_mask

        def share(hit: np.ndarray, where: np.ndarray) -> float | None:
            return float(hit[where].mean()) if where.any() else None

        return {
            "pseudo_correct_noisy": share(pseudo == split.y_true, noisy),
            "pseudo_keeps_noise": share(pseudo == split.y, noisy),
            "pseudo_wrong_clean": share(pseudo != split.y_true, ~noisy),
        }


def weighted_terms(logits: Tensor, y: Tensor, pseudo: Tensor | None) -> PerSample:
    """The per-sample terms of a weighted loss: the cross-entropy with the given labels, or,
    with pseudo-labels, ``w * (CE(y) - CE(pseudo)) + CE(pseudo)`` (weight ``w`` on the given
    label, ``1 - w`` on the pseudo-label), the weight read from the given label's loss."""
    given = L.cross_entropy(logits, y)
    if pseudo is None:
        return PerSample(weighted=given)
    soft = L.soft_cross_entropy(logits, pseudo)
    return PerSample(weighted=given - soft, unweighted=soft, features=given)
