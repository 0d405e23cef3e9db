"""The shared inputs of the meta-feature groups: :class:`Context` (a task's training split and
the arrays derived from it, each computed once: the seeded row subsample, the flattened inputs,
the binned features, the cross-validation folds) and the helpers that make them.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slem.data.task import Task

MAX_FEATURES = 100  # features used for pairwise correlation, feature entropy and MI
N_BINS = 10  # equal-frequency bins for entropy and mutual information
N_FOLDS = 3  # cross-validation folds of the landmarkers

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Folds = list[tuple[IntArray, IntArray]]


class Context:
    """The training split and the derived arrays the groups share, each computed once."""

    def __init__(self, task: Task, max_samples: int, seed: int) -> None:
        self.task = task
        self.classification = task.is_classification
        self.max_samples = max_samples
        self.seed = seed
        self.n = len(task.train)
        self.d = int(np.prod(task.train.X.shape[1:], dtype=np.int64))

    def rng(self, stage: int) -> np.random.Generator:
        """One generator per stage, so asking for fewer groups changes no value."""
        return np.random.default_rng([self.seed, stage])

    @cached_property
    def labels(self) -> IntArray:
        return np.asarray(self.task.train.y, dtype=np.int64)

    @cached_property
    def targets(self) -> FloatArray:
        return np.asarray(self.task.train.y, dtype=np.float64)

    @cached_property
    def rows(self) -> IntArray:
        """Sorted indices of the row subsample (stratified for classification)."""
        strata = self.labels if self.classification else None
        return subsample(self.n, self.max_samples, strata, self.rng(0))

    @cached_property
    def X(self) -> FloatArray:
        """Flattened float64 inputs of the subsample, non-finite values set to 0 (the mean)."""
        flat = self.task.train.X.reshape(self.n, -1)
        X = np.asarray(flat[self.rows], dtype=np.float64)
        return np.where(np.isfinite(X), X, 0.0)

    @cached_property
    def y_sub(self) -> IntArray:
        """Class labels (classification) or binned targets (regression) of the subsample."""
        if self.classification:
            return self.labels[self.rows]
        return bin_columns(self.targets[self.rows, None])[:, 0]

    @cached_property
    def n_y(self) -> int:
        return int(self.y_sub.max()) + 1

    @cached_property
    def constant(self) -> NDArray[np.bool_]:
        return np.asarray(np.ptp(self.X, axis=0) == 0, dtype=np.bool_)

    @cached_property
    def feature_subset(self) -> IntArray:
        """At most ``MAX_FEATURES`` seeded random features for correlation, entropy and MI."""
        if self.d <= MAX_FEATURES:
            return np.arange(self.d, dtype=np.int64)
        return np.sort(self.rng(1).choice(self.d, MAX_FEATURES, replace=False)).astype(np.int64)

    @cached_property
    def binned_subset(self) -> IntArray:
        return bin_columns(self.X[:, self.feature_subset])

    @cached_property
    def folds(self) -> Folds:
        return cv_folds(self.y_sub if self.classification else None, len(self.rows), self.seed)


def bin_columns(X: FloatArray, chunk: int = 256) -> IntArray:
    """Each column in ``N_BINS`` equal-frequency bins (codes 0..N_BINS-1); ties share a bin, so
    a constant column is all 0."""
    quantiles = np.arange(1, N_BINS) / N_BINS
    codes = np.empty(X.shape, dtype=np.int64)
    for start in range(0, X.shape[1], chunk):
        block = X[:, start : start + chunk]
        edges = np.quantile(block, quantiles, axis=0)  # (N_BINS - 1, columns)
        codes[:, start : start + chunk] = (block[:, None, :] > edges[None, :, :]).sum(axis=1)
    return codes


def subsample(n: int, size: int, strata: IntArray | None, rng: np.random.Generator) -> IntArray:
    """``size`` of ``n`` rows; with ``strata``, each class gets its proportional share (largest
    remainder rounding) and at least one row."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    if strata is None:
        return np.sort(rng.choice(n, size, replace=False)).astype(np.int64)
    classes, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    if len(classes) > size:  # cannot keep every class: sample uniformly
        return np.sort(rng.choice(n, size, replace=False)).astype(np.int64)
    quota = counts * size / n
    take = np.minimum(counts, np.maximum(1, np.floor(quota))).astype(np.int64)
    while take.sum() > size:  # the minimum of one row overshot: trim the most over-served class
        over = np.where(take > 1, take - quota, -np.inf)
        take[int(np.argmax(over))] -= 1
    short = np.where(take < counts, quota - take, -np.inf)
    order = np.argsort(-short, kind="stable")
    take[order[: size - int(take.sum())]] += 1  # largest remainders
    chosen = [
        rng.choice(np.flatnonzero(inverse == c), int(k), replace=False) for c, k in enumerate(take)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def cv_folds(labels: IntArray | None, n: int, seed: int) -> Folds:
    """3-fold CV splits: stratified when every class has 3 samples, else as many stratified
    folds as the smallest class allows (at least 2), else plain shuffled k-fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if n < 2:
        return []
    splitter: Any = KFold(min(N_FOLDS, n), shuffle=True, random_state=seed)
    if labels is not None:
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        k = min(N_FOLDS, int(counts.min()))
        if len(counts) > 1 and k >= 2:
            splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    return [
        (np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64))
        for tr, te in splitter.split(np.zeros((n, 1)), labels)
    ]
