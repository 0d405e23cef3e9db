"""Seeded, per-class sampling used by every split and corruption.

Counts are rounded without bias: a class of ``n`` asked for fraction ``f`` gives
``floor(f n)`` samples plus one more with probability ``frac(f n)``, so small classes are not
systematically over- or under-sampled, and realized rates match requested ones on average.
"""

from __future__ import annotations

import numpy as np


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """An independent generator per pipeline stage, so changing one stage (say the noise rate)
    leaves the others (the splits) exactly as they were."""
    return np.random.default_rng([seed, *stage.encode()])


def unbiased_round(x: float, rng: np.random.Generator) -> int:
    base = int(np.floor(x))
    return base + int(rng.random() < x - base)


def class_indices(labels: np.ndarray, n_classes: int) -> list[np.ndarray]:
    order = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=n_classes))[:-1]
    return np.split(order, bounds)


def take_fraction(
    n: int,
    fraction: float,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    n_classes: int = 0,
    min_left: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (taken, rest), stratified by class when integer ``labels`` are
    given; each class (or the whole set) keeps at least ``min_left`` samples in ``rest``."""
    if labels is None or n_classes == 0:
        return _take(np.arange(n), unbiased_round(fraction * n, rng), rng, min_left)
    taken, rest = [], []
    for idx in class_indices(labels, n_classes):
        t, r = _take(idx, unbiased_round(fraction * len(idx), rng), rng, min_left)
        taken.append(t)
        rest.append(r)
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def take_counts(
    labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Take exactly ``counts[c]`` random samples of each class c; returns (taken, rest)."""
    taken, rest = [], []
    for c, idx in enumerate(class_indices(labels, len(counts))):
        t, r = _take(idx, int(counts[c]), rng, 0)
        taken.append(t)
        rest.append(r)
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def _take(
    idx: np.ndarray, k: int, rng: np.random.Generator, min_left: int
) -> tuple[np.ndarray, np.ndarray]:
    k = max(0, min(k, len(idx) - min_left))
    perm = rng.permutation(idx)
    return perm[:k], perm[k:]
