"""The parts a :class:`~slem.data.task.Task` is made of: a :class:`Split` (inputs with
observed and clean targets), the :class:`Normalizer` fitted on the training split, and the
:class:`TaskFeatures` a methodology may observe, with :func:`group_by_size`, the class-size
grouping they carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slem.data.dataset import Dataset


@dataclass(frozen=True)
class Split:
    """Inputs with observed targets ``y`` and, for analysis only, the clean ``y_true``.

    ``index`` gives each row's position in its source (the training pool, or the official test
    split for ``Task.test`` when the source has one).
    """

    X: np.ndarray
    y: np.ndarray
    y_true: np.ndarray
    noisy_mask: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @property
    def noise_rate(self) -> float:
        return float(self.noisy_mask.mean()) if len(self) else 0.0

    def tensors(self, device: Any = None) -> tuple[Any, Any]:
        """``(X, y)`` as torch tensors (float32 inputs; int64 labels or float32 targets)."""
        import torch

        X = torch.as_tensor(self.X, dtype=torch.float32, device=device)
        dtype = torch.int64 if self.y.dtype.kind in "iu" else torch.float32
        return X, torch.as_tensor(self.y, dtype=dtype, device=device)

    @staticmethod
    def clean(X: np.ndarray, y: np.ndarray, index: np.ndarray) -> Split:
        return Split(X, y, y.copy(), np.zeros(len(y), dtype=bool), index)


@dataclass(frozen=True)
class Normalizer:
    """Input standardization fitted on a training split: median imputation, then
    ``(x - mean) / std`` per feature (tables) or per channel (images and signals)."""

    mean: np.ndarray
    std: np.ndarray
    fill: np.ndarray | None = None

    @staticmethod
    def fit(X: np.ndarray) -> Normalizer:
        """Fit on training inputs ``X``; tables (2-D) always get a median ``fill``, so missing
        values of a later split (a user's test file) are filled with training medians too."""
        axes = (0,) if X.ndim == 2 else (0, *range(2, X.ndim))
        fill = None
        if X.ndim == 2:
            fill = np.nanmedian(X, axis=0)
            fill = np.where(np.isnan(fill), 0.0, fill).astype(np.float32)
            X = np.where(np.isnan(X), fill, X)
        mean = X.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = X.std(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = np.where(std < 1e-8, 1.0, std)
        return Normalizer(mean.astype(np.float32), std.astype(np.float32), fill)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.fill is not None:
            X = np.where(np.isnan(X), self.fill, X)
        return ((X - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class TaskFeatures:
    """What a methodology may observe of a task without touching clean labels.

    ``class_counts`` are counts of the *observed* training labels. ``class_groups[c]`` is the
    size group of class c (0 = most frequent), from an exact 1-D k-means on log counts, as
    CMW-Net conditions its weighting on.
    """

    n_train: int
    n_meta: int
    n_val: int
    n_test: int
    n_features: int
    n_classes: int
    input_shape: tuple[int, ...]
    class_counts: tuple[int, ...]
    class_groups: tuple[int, ...]
    n_groups: int

    @property
    def imbalance_ratio(self) -> float:
        counts = [c for c in self.class_counts if c > 0]
        return max(counts) / min(counts) if counts else 1.0


def task_features(
    dataset: Dataset, train: Split, val: Split, test: Split, meta: Split | None, n_groups: int
) -> TaskFeatures:
    """The :class:`TaskFeatures` of a task's splits (class counts of the observed training
    labels, grouped by :func:`group_by_size`)."""
    counts = (
        np.bincount(train.y, minlength=dataset.n_classes)
        if dataset.is_classification
        else np.zeros(0, dtype=np.int64)
    )
    groups = group_by_size(counts, n_groups) if len(counts) else np.zeros(0, dtype=np.int64)
    return TaskFeatures(
        n_train=len(train),
        n_meta=len(meta) if meta is not None else 0,
        n_val=len(val),
        n_test=len(test),
        n_features=dataset.n_features,
        n_classes=dataset.n_classes,
        input_shape=dataset.input_shape,
        class_counts=tuple(int(c) for c in counts),
        class_groups=tuple(int(g) for g in groups),
        n_groups=int(groups.max()) + 1 if len(groups) else 0,
    )


def group_by_size(counts: np.ndarray, n_groups: int, min_ratio: float = 1.5) -> np.ndarray:
    """Group classes by size: optimal 1-D k-means on ``log(1 + count)``, group 0 = largest.

    Exact (dynamic programming over sorted values), so equal sizes always share a group.
    Neighbouring groups whose typical sizes differ by less than ``min_ratio`` are merged, so a
    balanced task whose observed counts differ only through label noise has a single group.
    """
    values = np.log1p(np.asarray(counts, dtype=np.float64))
    order = np.argsort(-values, kind="stable")
    v = values[order]
    distinct = len(np.unique(v))
    k = max(1, min(n_groups, distinct))
    n = len(v)
    prefix = np.concatenate([[0.0], np.cumsum(v)])
    prefix_sq = np.concatenate([[0.0], np.cumsum(v * v)])

    def cost(i: int, j: int) -> float:  # within-group sum of squares of v[i:j]
        s, s2, m = prefix[j] - prefix[i], prefix_sq[j] - prefix_sq[i], j - i
        return float(s2 - s * s / m)

    best = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            for i in range(g - 1, j):
                c = best[g - 1, i] + cost(i, j)
                if c < best[g, j] - 1e-12:
                    best[g, j], cut[g, j] = c, i
    labels_sorted = np.zeros(n, dtype=np.int64)
    j = n
    for g in range(k, 0, -1):
        i = int(cut[g, j])
        labels_sorted[i:j] = g - 1
        j = i
    # equal values must share a group: give ties the group of their first occurrence
    for t in range(1, n):
        if v[t] == v[t - 1]:
            labels_sorted[t] = labels_sorted[t - 1]
    centers = [float(v[labels_sorted == g].mean()) for g in range(int(labels_sorted.max()) + 1)]
    merged = np.zeros(len(centers), dtype=np.int64)
    for g in range(1, len(centers)):  # centers decrease with g; merge near-equal neighbours
        same = centers[g - 1] - centers[g] < np.log(min_ratio)
        merged[g] = merged[g - 1] + (0 if same else 1)
    labels_sorted = merged[labels_sorted]
    groups = np.empty(n, dtype=np.int64)
    groups[order] = labels_sorted
    return groups
