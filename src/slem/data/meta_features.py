"""Hand-crafted meta-features: measurable properties of a task, for warm-starting and meta-models.

The four groups of the AutoML tutorial (Hutter & Vanschoren): **simple** counts, **statistical**
properties of the inputs, **information**-theoretic quantities, and **landmarkers** (cross-
validated scores of fast learners). :data:`META_FEATURES` documents every feature, in the fixed
order in which :func:`meta_features` returns them.

Conventions, chosen so features compare across tasks:

* Everything is computed on ``task.train`` only, with the *observed* (possibly noisy) labels:
  the clean labels, validation, test and meta splits are never read. Label noise therefore
  shows up in the features (lower landmarker accuracy, lower mutual information), as it must
  for a methodology that only sees the observed labels.
* Images and signals are flattened to ``(n, d)``.
* Simple features and class/target distributions use all training rows. The statistical,
  information and landmarker groups use a seeded subsample of at most ``max_samples`` rows
  (stratified by class), so the cost does not grow with ``n``. Pairwise correlations, feature
  entropies and mutual information use a seeded random subset of at most 100 features.
* Entropies and mutual information are in **nats** (natural log); features are discretized into
  10 equal-frequency bins. Kurtosis is the excess (Fisher) kurtosis, 0 for a normal.
* Landmarkers are mean 3-fold cross-validated accuracy (stratified; with fewer folds, or plain
  k-fold, when a class has fewer than 3 samples). For regression, 1-NN, stump, random-node and
  elite-node report the cross-validated R² of the matching regressor with k-fold; naive Bayes
  and LDA have no regression counterpart here and are ``nan``.
* A feature undefined for a task is ``float('nan')``: class-based features on regression
  (:attr:`MetaFeature.task_types` says which), target statistics on classification, and
  degenerate cases (a correlation with fewer than 2 non-constant features, a ratio whose
  denominator is 0, a learner that cannot be fitted).

Warnings from numpy, scipy and scikit-learn on degenerate inputs are silenced inside
:func:`meta_features`; the ``nan`` values say what could not be computed.

This module holds the registry and :func:`meta_features`; the groups are computed in
:mod:`slem.data.meta_feature_groups` (simple, statistical, information) and
:mod:`slem.data.meta_feature_landmarkers`, from the shared arrays of
:mod:`slem.data.meta_feature_context`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from slem.data.dataset import TaskType
from slem.data.meta_feature_context import MAX_FEATURES as MAX_FEATURES
from slem.data.meta_feature_context import N_BINS as N_BINS
from slem.data.meta_feature_context import N_FOLDS as N_FOLDS
from slem.data.meta_feature_context import Context
from slem.data.meta_feature_context import FloatArray as FloatArray
from slem.data.meta_feature_context import Folds as Folds
from slem.data.meta_feature_context import IntArray as IntArray
from slem.data.meta_feature_context import subsample as _subsample  # noqa: F401
from slem.data.meta_feature_groups import (
    information_features,
    simple_features,
    statistical_features,
)
from slem.data.meta_feature_landmarkers import landmarker_features
from slem.data.task import Task
from slem.errors import SlemError

Group = Literal["simple", "statistical", "information", "landmarker"]
GROUPS: tuple[Group, ...] = ("simple", "statistical", "information", "landmarker")

BOTH: tuple[TaskType, ...] = ("classification", "regression")
CLS: tuple[TaskType, ...] = ("classification",)
REG: tuple[TaskType, ...] = ("regression",)


@dataclass(frozen=True)
class MetaFeature:
    """One documented meta-feature; ``task_types`` lists the task types it is defined for
    (it is ``nan`` on the others)."""

    name: str
    group: Group
    description: str  # one line: what it measures and how
    task_types: tuple[TaskType, ...] = BOTH


def _f(
    name: str, group: Group, description: str, task_types: tuple[TaskType, ...] = BOTH
) -> MetaFeature:
    return MetaFeature(name, group, description, task_types)


META_FEATURES: tuple[MetaFeature, ...] = (
    # --- simple: counts over all training rows ---
    _f("n_samples", "simple", "number of training samples n"),
    _f("log_n_samples", "simple", "natural log of the number of training samples"),
    _f("n_features", "simple", "number of input features d (images and signals flattened)"),
    _f("log_n_features", "simple", "natural log of the number of features"),
    _f("n_numeric_features", "simple", "number of numeric features (all features are numeric)"),
    _f("n_classes", "simple", "number of classes of the task", CLS),
    _f("dimensionality", "simple", "features per sample, d / n"),
    _f("log_dimensionality", "simple", "natural log of d / n"),
    _f("class_prob_min", "simple", "smallest observed class frequency (present classes)", CLS),
    _f("class_prob_max", "simple", "largest observed class frequency (present classes)", CLS),
    _f("class_prob_mean", "simple", "mean observed class frequency over present classes", CLS),
    _f("class_prob_std", "simple", "std of observed class frequencies (present classes)", CLS),
    _f(
        "imbalance_ratio",
        "simple",
        "largest / smallest observed class count (present classes)",
        CLS,
    ),
    # --- statistical: inputs of the row subsample ---
    _f("skewness_mean", "statistical", "mean per-feature skewness (non-constant features)"),
    _f("skewness_min", "statistical", "min per-feature skewness (non-constant features)"),
    _f("skewness_max", "statistical", "max per-feature skewness (non-constant features)"),
    _f("skewness_std", "statistical", "std of per-feature skewness (non-constant features)"),
    _f("kurtosis_mean", "statistical", "mean per-feature excess kurtosis (non-constant features)"),
    _f("kurtosis_min", "statistical", "min per-feature excess kurtosis (non-constant features)"),
    _f("kurtosis_max", "statistical", "max per-feature excess kurtosis (non-constant features)"),
    _f("kurtosis_std", "statistical", "std of per-feature excess kurtosis (non-constant features)"),
    _f(
        "constant_feature_fraction", "statistical", "fraction of features constant on the subsample"
    ),
    _f(
        "correlation_abs_mean",
        "statistical",
        "mean |Pearson r| over feature pairs (random <= 100 features, constant ones dropped)",
    ),
    _f(
        "pca_fraction_95",
        "statistical",
        "principal components needed for 95% of the variance, divided by d",
    ),
    _f(
        "pca_first_ratio",
        "statistical",
        "explained variance ratio of the first principal component",
    ),
    _f("target_skewness", "statistical", "skewness of the regression target (all rows)", REG),
    _f(
        "target_kurtosis", "statistical", "excess kurtosis of the regression target (all rows)", REG
    ),
    # --- information-theoretic: 10 equal-frequency bins, nats ---
    _f("class_entropy", "information", "entropy of the observed class distribution, nats", CLS),
    _f(
        "normalized_class_entropy",
        "information",
        "class entropy / log(n_classes), 1 = balanced",
        CLS,
    ),
    _f(
        "feature_entropy_mean",
        "information",
        "mean entropy of features in 10 equal-frequency bins, nats (random <= 100 features)",
    ),
    _f(
        "mutual_info_mean",
        "information",
        "mean MI between binned feature and class, nats (random <= 100 features)",
        CLS,
    ),
    _f(
        "mutual_info_max",
        "information",
        "max MI between binned feature and class, nats (random <= 100 features)",
        CLS,
    ),
    _f(
        "equivalent_n_attributes",
        "information",
        "class entropy / mean MI: features needed to explain the class if independent",
        CLS,
    ),
    _f(
        "noise_signal_ratio",
        "information",
        "(mean feature entropy - mean MI) / mean MI: irrelevant vs useful information",
        CLS,
    ),
    # --- landmarkers: 3-fold CV on the subsample (accuracy; R² for regression) ---
    _f("landmark_1nn", "landmarker", "3-fold CV score of a 1-nearest-neighbour model"),
    _f("landmark_stump", "landmarker", "3-fold CV score of a depth-1 decision tree"),
    _f("landmark_naive_bayes", "landmarker", "3-fold CV accuracy of Gaussian naive Bayes", CLS),
    _f(
        "landmark_lda", "landmarker", "3-fold CV accuracy of LDA (lsqr solver, auto shrinkage)", CLS
    ),
    _f(
        "landmark_random_node",
        "landmarker",
        "3-fold CV score of a depth-1 tree on one seeded random non-constant feature",
    ),
    _f(
        "landmark_elite_node",
        "landmarker",
        "3-fold CV score of a depth-1 tree on the feature (of all) of highest binned MI with y",
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in META_FEATURES)


def meta_features(
    task: Task,
    *,
    max_samples: int = 2000,
    seed: int = 0,
    groups: Iterable[str] | None = None,
) -> dict[str, float]:
    """Computed on task.train only (observed labels), never on val/test/meta.

    Returns ``{name: value}`` for every feature of :data:`META_FEATURES` in ``groups`` (all by
    default), in registry order; undefined features are ``nan`` (see the module docstring).
    The same ``task``, ``max_samples`` and ``seed`` always give the same values, whichever
    groups are asked for.
    """
    wanted = _parse_groups(groups)
    if max_samples < 2:
        raise SlemError(f"max_samples must be at least 2, got {max_samples}")
    if len(task.train) == 0:
        raise SlemError(f"task '{task.name}' has an empty training split; no meta-features")
    ctx = Context(task, max_samples, seed)
    if ctx.d == 0:
        raise SlemError(f"task '{task.name}' has no input features; no meta-features")
    values: dict[str, float] = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for group in wanted:
            values.update(_GROUP_FUNCTIONS[group](ctx))
    out: dict[str, float] = {}
    for feature in META_FEATURES:
        if feature.group not in wanted:
            continue
        value = values.get(feature.name, math.nan)
        out[feature.name] = float(value) if task.task_type in feature.task_types else math.nan
    return out


def _parse_groups(groups: Iterable[str] | None) -> tuple[Group, ...]:
    if groups is None:
        return GROUPS
    if isinstance(groups, str):  # a lone name, not its characters
        groups = [groups]
    names = set(groups)
    unknown = sorted(names - set(GROUPS))
    if unknown:
        raise SlemError(
            f"unknown meta-feature group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}"
        )
    return tuple(g for g in GROUPS if g in names)


_GROUP_FUNCTIONS: dict[Group, Callable[[Context], dict[str, float]]] = {
    "simple": simple_features,
    "statistical": statistical_features,
    "information": information_features,
    "landmarker": landmarker_features,
}
