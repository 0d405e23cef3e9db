"""Seeded corruptions that turn clean data into the imperfect data SLeM is built for.

Every label or target corruption returns the corrupted values *together with* the true ones
and a noisy-sample mask, so an experiment can report the realized noise rate and how well a
method detects the corrupted samples (e.g. the AUC of learned sample weights).

* :func:`symmetric_noise`: a flipped label is uniform over the *other* classes.
* :func:`uniform_noise`: a corrupted label is redrawn uniformly over *all* classes, so it may
  land on the true class (the ``unif`` corruption of the official MW-Net code, whose realized
  flip rate is ``rate * (C - 1) / C``).
* :func:`pairflip_noise`: class ``c`` flips to ``c+1 (mod C)``, or to a user map.
* :func:`instance_noise`: the flip probability and target class depend on the features
  (the instance-dependent noise of Xia et al., NeurIPS 2020, "Part-dependent label noise").
* :func:`long_tail`: subsample classes to an exponential (Cui et al. 2019) or step profile.
* :func:`regression_noise`: a fraction of targets gets noise from a mixture of Gaussian,
  Laplace, Student-t and gross-outlier components.

Symmetric and pair-flip noise flip an exact number of samples per class (unbiased rounding),
so the realized transition matrix equals the requested one up to rounding; uniform noise
redraws an exact number per class, of which a random ``1/C`` keep their label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from slem.data.splits import class_indices, unbiased_round
from slem.errors import SlemError

LABEL_NOISE_KINDS = ("symmetric", "uniform", "pairflip", "instance")
TARGET_NOISE_KINDS = ("gaussian", "laplace", "student_t", "outlier", "mixture")
MIXTURE_COMPONENTS = ("gaussian", "laplace", "student_t", "outlier")


@dataclass(frozen=True)
class LabelNoise:
    """Corrupted labels, the truth, and the transition matrix they were drawn from.

    ``transition[i, j]`` is the probability that a sample of clean class ``i`` is labelled
    ``j``. For instance-dependent noise it is the average over the samples of each class, and
    ``sample_rows[k]`` is the distribution sample ``k``'s label was drawn from.
    """

    labels: np.ndarray
    true_labels: np.ndarray
    transition: np.ndarray
    kind: str
    rate: float
    sample_rows: np.ndarray | None = None

    @property
    def noisy_mask(self) -> np.ndarray:
        return self.labels != self.true_labels

    @property
    def realized_rate(self) -> float:
        return float(self.noisy_mask.mean()) if len(self.labels) else 0.0

    def realized_transition(self) -> np.ndarray:
        """Empirical ``P(label = j | true = i)``; rows of absent classes are zero."""
        n = self.transition.shape[0]
        counts = np.zeros((n, n))
        np.add.at(counts, (self.true_labels, self.labels), 1.0)
        return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


@dataclass(frozen=True)
class TargetNoise:
    """Corrupted regression targets, the truth, and which samples were corrupted."""

    targets: np.ndarray
    true_targets: np.ndarray
    noisy_mask: np.ndarray
    components: np.ndarray  # per sample: -1 clean, else index into MIXTURE_COMPONENTS
    kind: str
    rate: float

    @property
    def realized_rate(self) -> float:
        return float(self.noisy_mask.mean()) if len(self.targets) else 0.0


@dataclass(frozen=True)
class Imbalance:
    """Which samples a long-tail subsampling keeps (labels are unchanged, so no noisy mask)."""

    indices: np.ndarray
    class_counts: np.ndarray
    factor: float
    profile: str


def check_rate(rate: float, what: str = "noise rate") -> None:
    if not 0.0 <= rate < 1.0:
        raise SlemError(f"{what} {rate} is outside [0, 1); use e.g. 0.4 for 40%")


def _check_labels(labels: np.ndarray, n_classes: int) -> None:
    if n_classes < 2:
        raise SlemError("label noise needs at least 2 classes")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise SlemError(f"labels must lie in 0..{n_classes - 1}")


def symmetric_transition(rate: float, n_classes: int) -> np.ndarray:
    off = rate / (n_classes - 1)
    return np.full((n_classes, n_classes), off) + np.eye(n_classes) * (1.0 - rate - off)


def uniform_transition(rate: float, n_classes: int) -> np.ndarray:
    """``rate * U + (1 - rate) * I`` with ``U`` the all-``1/C`` matrix: the diagonal is
    ``1 - rate + rate / C``, every other entry ``rate / C`` (MW-Net's ``uniform_mix_C``)."""
    return rate * np.full((n_classes, n_classes), 1.0 / n_classes) + (1.0 - rate) * np.eye(
        n_classes
    )


def pairflip_transition(
    rate: float, n_classes: int, mapping: Mapping[int, int] | None = None
) -> np.ndarray:
    targets = _pair_targets(n_classes, mapping)
    transition = np.eye(n_classes)
    for c, t in enumerate(targets):
        if t != c:
            transition[c, c] = 1.0 - rate
            transition[c, t] = rate
    return transition


def _pair_targets(n_classes: int, mapping: Mapping[int, int] | None) -> np.ndarray:
    targets = (np.arange(n_classes) + 1) % n_classes
    if mapping is not None:
        targets = np.arange(n_classes)  # classes missing from a user map stay clean
        for src, dst in mapping.items():
            if not (0 <= int(src) < n_classes and 0 <= int(dst) < n_classes):
                raise SlemError(
                    f"pair-flip map {src}->{dst} names a class outside 0..{n_classes - 1}"
                )
            targets[int(src)] = int(dst)
    return targets


def _flip_exact(
    labels: np.ndarray,
    rate: float,
    n_classes: int,
    rng: np.random.Generator,
    choose_target: np.ndarray | None,
) -> np.ndarray:
    """Flip ``rate * n_c`` samples of each class c, to ``choose_target[c]`` or uniformly."""
    noisy = labels.copy()
    for c, idx in enumerate(class_indices(labels, n_classes)):
        if choose_target is not None and choose_target[c] == c:
            continue
        k = unbiased_round(rate * len(idx), rng)
        flip = rng.choice(idx, size=k, replace=False)
        if choose_target is not None:
            noisy[flip] = choose_target[c]
        else:  # uniform over the other classes: draw from C-1 and skip c
            draw = rng.integers(0, n_classes - 1, size=k)
            noisy[flip] = draw + (draw >= c)
    return noisy


def symmetric_noise(
    labels: np.ndarray, rate: float, n_classes: int, rng: np.random.Generator
) -> LabelNoise:
    """Flip a fraction ``rate`` of each class to a label drawn uniformly from the others."""
    check_rate(rate)
    _check_labels(labels, n_classes)
    noisy = _flip_exact(labels, rate, n_classes, rng, None)
    return LabelNoise(
        noisy, labels.copy(), symmetric_transition(rate, n_classes), "symmetric", rate
    )


def uniform_noise(
    labels: np.ndarray, rate: float, n_classes: int, rng: np.random.Generator
) -> LabelNoise:
    """Redraw the label of a fraction ``rate`` of each class uniformly from all ``C`` classes.

    This is the ``unif`` corruption of the official MW-Net code (xjtushujun/meta-weight-net,
    ``load_corrupted_data.py``, ``uniform_mix_C``): a redrawn label equals the true one with
    probability ``1/C``, so the realized flip rate is ``rate * (C - 1) / C`` (0.36 for 0.4 on
    10 classes), and ``transition`` is :func:`uniform_transition`. The number redrawn per class
    is exact up to unbiased rounding (the official code draws each label independently).

    Args:
        labels: (n,) clean class indices in ``0..n_classes-1``.
        rate: fraction of each class whose label is redrawn, in [0, 1).
        n_classes: ``C``, at least 2.
        rng: the generator (the task pipeline passes its ``noise-*`` stage generator).

    Raises:
        SlemError: ``rate`` outside [0, 1), fewer than 2 classes, or labels out of range.
    """
    check_rate(rate)
    _check_labels(labels, n_classes)
    noisy = labels.copy()
    for idx in class_indices(labels, n_classes):
        k = unbiased_round(rate * len(idx), rng)
        redraw = rng.choice(idx, size=k, replace=False)
        noisy[redraw] = rng.integers(0, n_classes, size=k)
    return LabelNoise(noisy, labels.copy(), uniform_transition(rate, n_classes), "uniform", rate)


def pairflip_noise(
    labels: np.ndarray,
    rate: float,
    n_classes: int,
    rng: np.random.Generator,
    mapping: Mapping[int, int] | None = None,
) -> LabelNoise:
    """Flip a fraction ``rate`` of class c to ``c+1 mod C`` (or ``mapping[c]``)."""
    check_rate(rate)
    _check_labels(labels, n_classes)
    targets = _pair_targets(n_classes, mapping)
    noisy = _flip_exact(labels, rate, n_classes, rng, targets)
    return LabelNoise(
        noisy, labels.copy(), pairflip_transition(rate, n_classes, mapping), "pairflip", rate
    )


def instance_noise(
    labels: np.ndarray,
    features: np.ndarray,
    rate: float,
    n_classes: int,
    rng: np.random.Generator,
    rate_std: float = 0.1,
) -> LabelNoise:
    """Feature-dependent noise (Xia et al. 2020): per sample, a flip rate
    ``q ~ N(rate, rate_std)`` truncated to [0, 1], and flip targets ``softmax(x W_y)`` over the
    other classes, with a random projection ``W_y`` per class and ``x`` scaled to unit norm.
    The realized rate matches ``rate`` in expectation."""
    check_rate(rate)
    _check_labels(labels, n_classes)
    n = len(labels)
    x = features.reshape(n, -1).astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    q = _truncated_normal(rate, rate_std, n, rng) if rate > 0 else np.zeros(n)
    projections = rng.standard_normal((n_classes, x.shape[1], n_classes))
    scores = np.empty((n, n_classes))
    for c, idx in enumerate(class_indices(labels, n_classes)):  # (n, d, C) would not fit
        scores[idx] = x[idx] @ projections[c]
    scores[np.arange(n), labels] = -np.inf
    scores -= scores.max(axis=1, keepdims=True)
    rows = np.exp(scores)
    rows *= (q / rows.sum(axis=1))[:, None]
    rows[np.arange(n), labels] = 1.0 - q
    cumulative = np.cumsum(rows, axis=1)
    draws = rng.random(n)[:, None] * cumulative[:, -1:]
    noisy = np.minimum((cumulative < draws).sum(axis=1), n_classes - 1).astype(labels.dtype)
    transition = np.zeros((n_classes, n_classes))
    np.add.at(transition, labels, rows)
    transition /= np.maximum(np.bincount(labels, minlength=n_classes), 1)[:, None]
    for c in range(n_classes):
        if transition[c].sum() == 0:
            transition[c, c] = 1.0
    return LabelNoise(noisy, labels.copy(), transition, "instance", rate, sample_rows=rows)


def _truncated_normal(mean: float, std: float, size: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.stats import truncnorm

    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    return np.asarray(truncnorm.rvs(lo, hi, loc=mean, scale=std, size=size, random_state=rng))


def long_tail_counts(
    available: np.ndarray,
    factor: float,
    profile: Literal["exponential", "step"] = "exponential",
    minority_fraction: float = 0.5,
) -> np.ndarray:
    """Per-class target counts with head/tail ratio ``factor``, the largest that fit.

    Class 0 is the head. Exponential: ``n_c = n_0 * factor ** (-c / (C - 1))``. Step: the
    last ``minority_fraction`` of the classes get ``n_0 / factor``.
    """
    if factor < 1:
        raise SlemError(f"imbalance factor {factor} is below 1; use 1 for balanced, e.g. 100")
    n_classes = len(available)
    c = np.arange(n_classes)
    if profile == "exponential":
        ratios = factor ** (-c / max(n_classes - 1, 1))
    elif profile == "step":
        n_minor = round(minority_fraction * n_classes)
        ratios = np.where(c >= n_classes - n_minor, 1.0 / factor, 1.0)
    else:
        raise SlemError(f"imbalance profile '{profile}' is unknown; use exponential or step")
    head = np.floor(np.min(available / ratios) + 1e-9)
    counts = np.maximum(np.floor(head * ratios + 1e-9), 1).astype(np.int64)
    return np.minimum(counts, available)


def long_tail(
    labels: np.ndarray,
    factor: float,
    n_classes: int,
    rng: np.random.Generator,
    profile: Literal["exponential", "step"] = "exponential",
) -> Imbalance:
    """Subsample each class to :func:`long_tail_counts`; returns the kept indices."""
    available = np.bincount(labels, minlength=n_classes)
    if (available == 0).any():
        raise SlemError("long-tail imbalance needs every class present in the data")
    counts = long_tail_counts(available, factor, profile)
    kept = [
        rng.choice(idx, size=counts[c], replace=False)
        for c, idx in enumerate(class_indices(labels, n_classes))
    ]
    return Imbalance(np.sort(np.concatenate(kept)), counts, float(factor), profile)


def regression_noise(
    targets: np.ndarray,
    rate: float,
    rng: np.random.Generator,
    kind: str = "mixture",
    weights: Mapping[str, float] | None = None,
    scale: float = 1.0,
    outlier_scale: float = 10.0,
    student_df: float = 2.0,
) -> TargetNoise:
    """Add noise to a fraction ``rate`` of the targets.

    Noise sizes are relative to the targets' standard deviation ``s``: Gaussian ``N(0, (scale
    s)^2)``, Laplace of the same variance, Student-t with ``student_df`` degrees of freedom
    scaled by ``scale s``, and gross outliers of magnitude uniform in ``[0.5, 1] *
    outlier_scale * s`` with a random sign. ``kind='mixture'`` draws the component of each
    corrupted sample from ``weights`` (equal by default).
    """
    check_rate(rate)
    if kind not in TARGET_NOISE_KINDS:
        raise SlemError(
            f"regression noise '{kind}' is unknown; use one of {', '.join(TARGET_NOISE_KINDS)}"
        )
    probs = _mixture_weights(kind, weights)
    y = np.asarray(targets, dtype=np.float64)
    s = float(y.std()) or 1.0
    n_noisy = unbiased_round(rate * len(y), rng)
    noisy_idx = rng.choice(len(y), size=n_noisy, replace=False)
    component = np.full(len(y), -1, dtype=np.int64)
    component[noisy_idx] = rng.choice(len(MIXTURE_COMPONENTS), size=n_noisy, p=probs)
    draws: dict[str, Callable[[int], np.ndarray]] = {
        "gaussian": lambda k: rng.normal(0.0, scale * s, k),
        "laplace": lambda k: rng.laplace(0.0, scale * s / np.sqrt(2.0), k),
        "student_t": lambda k: scale * s * rng.standard_t(student_df, k),
        "outlier": lambda k: (
            rng.choice([-1.0, 1.0], k) * rng.uniform(0.5, 1.0, k) * outlier_scale * s
        ),
    }
    noisy = y.copy()
    for j, name in enumerate(MIXTURE_COMPONENTS):
        where = np.flatnonzero(component == j)
        noisy[where] += draws[name](len(where))
    return TargetNoise(noisy, y.copy(), component >= 0, component, kind, rate)


def _mixture_weights(kind: str, weights: Mapping[str, float] | None) -> np.ndarray:
    if kind != "mixture":
        return np.array([float(name == kind) for name in MIXTURE_COMPONENTS])
    if weights is None:
        return np.full(len(MIXTURE_COMPONENTS), 1.0 / len(MIXTURE_COMPONENTS))
    unknown = set(weights) - set(MIXTURE_COMPONENTS)
    if unknown:
        raise SlemError(
            f"mixture component(s) {', '.join(sorted(unknown))} unknown; use "
            + ", ".join(MIXTURE_COMPONENTS)
        )
    w = np.array([float(weights.get(name, 0.0)) for name in MIXTURE_COMPONENTS])
    if (w < 0).any() or w.sum() <= 0:
        raise SlemError("mixture weights must be non-negative and not all zero")
    return w / w.sum()
