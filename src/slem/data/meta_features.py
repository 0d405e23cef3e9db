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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from slem.data.dataset import TaskType
from slem.data.task import Task
from slem.errors import SlemError

Group = Literal["simple", "statistical", "information", "landmarker"]
GROUPS: tuple[Group, ...] = ("simple", "statistical", "information", "landmarker")

BOTH: tuple[TaskType, ...] = ("classification", "regression")
CLS: tuple[TaskType, ...] = ("classification",)
REG: tuple[TaskType, ...] = ("regression",)

MAX_FEATURES = 100  # features used for pairwise correlation, feature entropy and MI
N_BINS = 10  # equal-frequency bins for entropy and mutual information
N_FOLDS = 3  # cross-validation folds of the landmarkers

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Folds = list[tuple[IntArray, IntArray]]


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
    ctx = _Context(task, max_samples, seed)
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


class _Context:
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
        return _subsample(self.n, self.max_samples, strata, self.rng(0))

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
        return _bin_columns(self.targets[self.rows, None])[:, 0]

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
        return _bin_columns(self.X[:, self.feature_subset])

    @cached_property
    def folds(self) -> Folds:
        return _folds(self.y_sub if self.classification else None, len(self.rows), self.seed)


# ---------------------------------------------------------------------------------------------
# simple


def _simple(ctx: _Context) -> dict[str, float]:
    n, d = ctx.n, ctx.d
    out = {
        "n_samples": float(n),
        "log_n_samples": math.log(n),
        "n_features": float(d),
        "log_n_features": math.log(d) if d > 0 else math.nan,
        "n_numeric_features": float(d),
        "dimensionality": d / n,
        "log_dimensionality": math.log(d / n) if d > 0 else math.nan,
    }
    if ctx.classification:
        counts = _present_counts(ctx.labels)
        probs = counts / counts.sum()
        out.update(
            n_classes=float(ctx.task.n_classes),
            class_prob_min=float(probs.min()),
            class_prob_max=float(probs.max()),
            class_prob_mean=float(probs.mean()),
            class_prob_std=float(probs.std()),
            imbalance_ratio=float(counts.max() / counts.min()),
        )
    return out


def _present_counts(labels: IntArray) -> FloatArray:
    counts = np.bincount(labels)
    return counts[counts > 0].astype(np.float64)


# ---------------------------------------------------------------------------------------------
# statistical


def _statistical(ctx: _Context) -> dict[str, float]:
    from scipy import stats

    X = ctx.X
    varying = X[:, ~ctx.constant]
    out: dict[str, float] = {"constant_feature_fraction": float(ctx.constant.mean())}
    if varying.shape[1] and len(X) > 1:
        skew = np.asarray(stats.skew(varying, axis=0, bias=True), dtype=np.float64)
        kurt = np.asarray(stats.kurtosis(varying, axis=0, fisher=True, bias=True), dtype=np.float64)
    else:
        skew = kurt = np.full(0, np.nan)
    for name, values in (("skewness", skew), ("kurtosis", kurt)):
        out.update(_summary(name, values))
    out["correlation_abs_mean"] = _mean_abs_correlation(X[:, ctx.feature_subset])
    out.update(_pca(X))
    if not ctx.classification:
        y = ctx.targets
        constant_y = bool(np.ptp(y) == 0)
        out["target_skewness"] = math.nan if constant_y else float(stats.skew(y, bias=True))
        out["target_kurtosis"] = math.nan if constant_y else float(stats.kurtosis(y, bias=True))
    return out


def _summary(name: str, values: FloatArray) -> dict[str, float]:
    """mean/min/max/std of the finite values, nan when there are none."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {f"{name}_{s}": math.nan for s in ("mean", "min", "max", "std")}
    return {
        f"{name}_mean": float(finite.mean()),
        f"{name}_min": float(finite.min()),
        f"{name}_max": float(finite.max()),
        f"{name}_std": float(finite.std()),
    }


def _mean_abs_correlation(X: FloatArray) -> float:
    X = X[:, np.ptp(X, axis=0) > 0]
    if X.shape[1] < 2 or len(X) < 2:
        return math.nan
    corr = np.atleast_2d(np.asarray(np.corrcoef(X, rowvar=False), dtype=np.float64))
    upper = np.abs(corr[np.triu_indices_from(corr, k=1)])
    upper = upper[np.isfinite(upper)]
    return float(upper.mean()) if len(upper) else math.nan


def _pca(X: FloatArray) -> dict[str, float]:
    nan = {"pca_fraction_95": math.nan, "pca_first_ratio": math.nan}
    if len(X) < 2:
        return nan
    centered = X - X.mean(axis=0)
    try:
        singular = np.linalg.svd(centered, full_matrices=False, compute_uv=False)
    except np.linalg.LinAlgError:
        return nan
    variance = singular**2
    total = float(variance.sum())
    if not total > 0:
        return nan
    cumulative = np.cumsum(variance) / total
    needed = int(np.searchsorted(cumulative, 0.95 - 1e-12)) + 1
    return {"pca_fraction_95": needed / X.shape[1], "pca_first_ratio": float(variance[0] / total)}


# ---------------------------------------------------------------------------------------------
# information-theoretic


def _information(ctx: _Context) -> dict[str, float]:
    binned = ctx.binned_subset
    feature_entropy = float(np.mean(_column_entropies(binned)))
    out = {"feature_entropy_mean": feature_entropy}
    if not ctx.classification:
        return out
    class_entropy = _entropy(_present_counts(ctx.labels))
    n_classes = ctx.task.n_classes
    mi = _mutual_information(binned, ctx.y_sub, ctx.n_y)
    mi_mean = float(mi.mean())
    out.update(
        class_entropy=class_entropy,
        normalized_class_entropy=class_entropy / math.log(n_classes) if n_classes > 1 else math.nan,
        mutual_info_mean=mi_mean,
        mutual_info_max=float(mi.max()),
        equivalent_n_attributes=_ratio(class_entropy, mi_mean),
        noise_signal_ratio=_ratio(feature_entropy - mi_mean, mi_mean),
    )
    return out


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 1e-12 else math.nan


def _entropy(counts: FloatArray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _bin_columns(X: FloatArray, chunk: int = 256) -> IntArray:
    """Each column in ``N_BINS`` equal-frequency bins (codes 0..N_BINS-1); ties share a bin, so
    a constant column is all 0."""
    quantiles = np.arange(1, N_BINS) / N_BINS
    codes = np.empty(X.shape, dtype=np.int64)
    for start in range(0, X.shape[1], chunk):
        block = X[:, start : start + chunk]
        edges = np.quantile(block, quantiles, axis=0)  # (N_BINS - 1, columns)
        codes[:, start : start + chunk] = (block[:, None, :] > edges[None, :, :]).sum(axis=1)
    return codes


def _column_entropies(codes: IntArray) -> FloatArray:
    n, d = codes.shape
    counts = np.bincount((np.arange(d) * N_BINS + codes).ravel(), minlength=d * N_BINS)
    p = counts.reshape(d, N_BINS) / n
    return np.asarray(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1))


def _mutual_information(codes: IntArray, y: IntArray, n_y: int) -> FloatArray:
    """Plug-in mutual information (nats) between each binned column and ``y``."""
    n, d = codes.shape
    index = (np.arange(d) * N_BINS + codes) * n_y + y[:, None]
    joint = np.bincount(index.ravel(), minlength=d * N_BINS * n_y).reshape(d, N_BINS, n_y) / n
    p_x = joint.sum(axis=2, keepdims=True)
    p_y = np.bincount(y, minlength=n_y)[None, None, :] / n
    expected = p_x * p_y
    ratio = np.where(joint > 0, joint / np.where(expected > 0, expected, 1.0), 1.0)
    return np.asarray(np.maximum((joint * np.log(ratio)).sum(axis=(1, 2)), 0.0))


# ---------------------------------------------------------------------------------------------
# landmarkers


def _landmarkers(ctx: _Context) -> dict[str, float]:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    X, y = ctx.X, (ctx.labels[ctx.rows] if ctx.classification else ctx.targets[ctx.rows])
    seed = ctx.seed
    if ctx.classification:
        models: dict[str, Callable[[], Any]] = {
            "landmark_1nn": lambda: KNeighborsClassifier(n_neighbors=1),
            "landmark_stump": lambda: DecisionTreeClassifier(max_depth=1, random_state=seed),
            "landmark_naive_bayes": GaussianNB,
            "landmark_lda": lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"),
        }
    else:
        models = {
            "landmark_1nn": lambda: KNeighborsRegressor(n_neighbors=1),
            "landmark_stump": lambda: DecisionTreeRegressor(max_depth=1, random_state=seed),
        }
    out = {
        name: _cross_validate(make, X, y, ctx.folds, ctx.classification)
        for name, make in models.items()
    }
    stump = models["landmark_stump"]
    varying = np.flatnonzero(~ctx.constant)
    candidates = varying if len(varying) else np.arange(ctx.d)
    random_feature = int(ctx.rng(2).choice(candidates))
    elite_feature = _elite_feature(ctx)
    for name, feature in (
        ("landmark_random_node", random_feature),
        ("landmark_elite_node", elite_feature),
    ):
        out[name] = _cross_validate(stump, X[:, [feature]], y, ctx.folds, ctx.classification)
    return out


def _elite_feature(ctx: _Context, chunk: int = 512) -> int:
    """The feature of highest binned MI with the class (binned target), over all features."""
    best, best_mi = 0, -math.inf
    for start in range(0, ctx.d, chunk):
        mi = _mutual_information(_bin_columns(ctx.X[:, start : start + chunk]), ctx.y_sub, ctx.n_y)
        j = int(np.argmax(mi))
        if mi[j] > best_mi:
            best, best_mi = start + j, float(mi[j])
    return best


def _subsample(n: int, size: int, strata: IntArray | None, rng: np.random.Generator) -> IntArray:
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


def _folds(labels: IntArray | None, n: int, seed: int) -> Folds:
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


def _cross_validate(
    make: Callable[[], Any], X: FloatArray, y: NDArray[Any], folds: Folds, classification: bool
) -> float:
    """Mean held-out accuracy (classification) or R² (regression); nan if a fold fails."""
    if not folds:
        return math.nan
    scores = []
    for train, test in folds:
        try:
            model = make()
            model.fit(X[train], y[train])
            predicted = np.asarray(model.predict(X[test]))
        except (ValueError, np.linalg.LinAlgError):
            return math.nan
        if classification:
            scores.append(float(np.mean(predicted == y[test])))
        else:
            residual = float(np.sum((y[test] - predicted) ** 2))
            total = float(np.sum((y[test] - y[test].mean()) ** 2))
            scores.append(1.0 - residual / total if total > 0 else math.nan)
    return float(np.mean(scores))


_GROUP_FUNCTIONS: dict[Group, Callable[[_Context], dict[str, float]]] = {
    "simple": _simple,
    "statistical": _statistical,
    "information": _information,
    "landmarker": _landmarkers,
}
