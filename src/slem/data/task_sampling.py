"""How :func:`~slem.data.task.make_task` draws its splits' indices: the sizes behind
``train_size`` (and the generated dataset size it needs), the exact stratified train/val split,
and the meta set drawn from the training pool.
"""

from __future__ import annotations

import numpy as np

from slem.data.config import DataConfig
from slem.data.dataset import Dataset
from slem.data.splits import stage_rng, take_counts
from slem.errors import SlemError


def generated_size(config: DataConfig) -> int | None:
    """For a generated dataset (MNIST-1D) with ``train_size``: enough samples that the pool
    (80% of them) holds the training, validation and meta sets, or the default if larger."""
    from slem.data.registry import BUILTIN, canonical_name

    spec = BUILTIN.get(canonical_name(config.name))
    if spec is None or not spec.generates_size or config.train_size is None:
        return None
    from slem.data.sources import mnist1d

    train = config.train_size
    needed = train + _val_count(train, config.val_fraction) + 10 * (config.meta_per_class or 0)
    return max(mnist1d.DEFAULT_SIZE, int(np.ceil(needed / 0.8 * 1.05)) + 100)


def _val_count(train_size: int, val_fraction: float) -> int:
    """Validation samples beside ``train_size`` training ones: ``val_fraction`` of both."""
    return max(1, round(train_size * val_fraction / (1.0 - val_fraction)))


def _max_train_size(pool: int, val_fraction: float) -> int:
    """The largest ``T`` with ``T + _val_count(T) <= pool``."""
    t = int(pool * (1.0 - val_fraction)) + 1
    while t > 0 and t + _val_count(t, val_fraction) > pool:
        t -= 1
    return t


def _stratified_exact(
    labels: np.ndarray, total: int, n_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (taken, rest) with exactly ``total`` taken, spread over the classes in
    proportion to their counts (largest remainder, ties broken at random)."""
    counts = np.bincount(labels, minlength=n_classes)
    quota = total * counts / max(len(labels), 1)
    alloc = np.floor(quota).astype(np.int64)
    short = total - int(alloc.sum())
    if short > 0:
        order = np.lexsort((rng.random(n_classes), -(quota - alloc)))
        alloc[order[:short]] += 1
    return take_counts(labels, np.minimum(alloc, counts), rng)


def split_train_val(
    dataset: Dataset, pool: np.ndarray, cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``cfg.train_size`` training and ``_val_count`` validation indices from
    ``pool``, stratified by class (classification)."""
    train_size = int(cfg.train_size or 0)
    n_val = _val_count(train_size, cfg.val_fraction)
    if train_size + n_val > len(pool):
        raise SlemError(
            f"data.train_size {train_size} is more than '{dataset.name}' can give: after the "
            f"test and meta sets {len(pool)} samples are left, which hold at most "
            f"{_max_train_size(len(pool), cfg.val_fraction)} training samples beside the "
            f"validation split (val_fraction {cfg.val_fraction:g})"
        )
    if dataset.is_classification:
        labels = dataset.y[pool]
        used, _ = _stratified_exact(
            labels, train_size + n_val, dataset.n_classes, stage_rng(cfg.seed, "train-size")
        )
        val_pos, train_pos = _stratified_exact(
            labels[used], n_val, dataset.n_classes, stage_rng(cfg.seed, "val")
        )
        return pool[used][train_pos], pool[used][val_pos]
    perm = stage_rng(cfg.seed, "val").permutation(pool)
    return np.sort(perm[n_val : n_val + train_size]), np.sort(perm[:n_val])


def draw_meta(dataset: Dataset, pool: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Positions (meta, rest) of ``pool``: ``meta_size`` random samples (regression) or
    ``meta_per_class`` per class, drawn before any corruption."""
    rng = stage_rng(cfg.seed, "meta")
    if not dataset.is_classification:
        size = int(cfg.meta_size or 0)
        if size >= len(pool):
            raise SlemError(f"meta_size {size} leaves no training data (pool has {len(pool)})")
        perm = rng.permutation(pool)
        return np.sort(perm[:size]), np.sort(perm[size:])
    k = int(cfg.meta_per_class or 0)
    counts = np.bincount(dataset.y[pool], minlength=dataset.n_classes)
    smallest = int(np.argmin(counts))
    if k >= counts[smallest]:
        raise SlemError(
            f"meta_per_class {k} is more than class '{dataset.class_names[smallest]}' can give "
            f"({counts[smallest]} samples in the training pool); use at most "
            f"{max(counts[smallest] - 1, 0)}"
        )
    taken, rest = take_counts(dataset.y[pool], np.full(dataset.n_classes, k), rng)
    return pool[taken], pool[rest]
