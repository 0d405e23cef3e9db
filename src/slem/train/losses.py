"""Per-sample classification losses: cross-entropy and the robust-loss baselines.

Each returns one loss per sample (``reduction="none"``) so the same harness can weight,
select or average them.

* GCE (Zhang & Sabuncu 2018): ``(1 - p_y^q) / q``; q -> 0 is CE, q = 1 is MAE.
* SCE (Wang et al. 2019): ``alpha * CE + beta * RCE`` with the reverse cross-entropy
  ``RCE = -A (1 - p_y)``, ``A = log(1e-4)``.
* Bootstrapping (Reed et al. 2015): CE against ``beta * onehot(y) + (1 - beta) * t`` with
  ``t`` the model's own prediction (soft) or its argmax (hard).
* Class-balanced (Cui et al. 2019): CE weighted per class by ``(1 - b) / (1 - b^n_c)``,
  normalized so the weights average 1 over classes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """CE against a probability vector per sample."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


def gce(logits: Tensor, y: Tensor, q: float = 0.7) -> Tensor:
    p_y = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1).clamp_min(1e-7)
    return (1.0 - p_y**q) / q


def sce(logits: Tensor, y: Tensor, alpha: float = 0.1, beta: float = 1.0) -> Tensor:
    p_y = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    rce = -torch.log(torch.tensor(1e-4, device=logits.device)) * (1.0 - p_y)
    return alpha * cross_entropy(logits, y) + beta * rce


def bootstrap(
    logits: Tensor, y: Tensor, beta: float = 0.95, mode: Literal["soft", "hard"] = "soft"
) -> Tensor:
    n_classes = logits.shape[1]
    with torch.no_grad():
        probs = F.softmax(logits, dim=1)
        own = probs if mode == "soft" else F.one_hot(probs.argmax(1), n_classes).to(probs.dtype)
    target = beta * F.one_hot(y, n_classes).to(own.dtype) + (1.0 - beta) * own
    return soft_cross_entropy(logits, target)


def class_balanced_weights(counts: Tensor, beta: float = 0.999) -> Tensor:
    """Per-class weights from the effective number of samples, averaging 1 over classes."""
    effective = (1.0 - beta ** counts.clamp_min(1).to(torch.float64)) / (1.0 - beta)
    w = 1.0 / effective
    return (w / w.sum() * len(counts)).to(torch.get_default_dtype())


def class_balanced(logits: Tensor, y: Tensor, class_weights: Tensor) -> Tensor:
    return class_weights.to(logits.dtype)[y] * cross_entropy(logits, y)
