"""Three of the four meta-feature groups: **simple** counts, **statistical** properties of the
inputs, and **information**-theoretic quantities (the landmarkers are in
:mod:`slem.data.meta_feature_landmarkers`). Each group maps a :class:`Context` to
``{name: value}``; :func:`slem.data.meta_features.meta_features` documents the features.
"""

from __future__ import annotations

import math

import numpy as np

from slem.data.meta_feature_context import N_BINS, Context, FloatArray, IntArray

# ---------------------------------------------------------------------------------------------
# simple


def simple_features(ctx: Context) -> dict[str, float]:
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


def statistical_features(ctx: Context) -> dict[str, float]:
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


def information_features(ctx: Context) -> dict[str, float]:
    binned = ctx.binned_subset
    feature_entropy = float(np.mean(_column_entropies(binned)))
    out = {"feature_entropy_mean": feature_entropy}
    if not ctx.classification:
        return out
    class_entropy = _entropy(_present_counts(ctx.labels))
    n_classes = ctx.task.n_classes
    mi = mutual_information(binned, ctx.y_sub, ctx.n_y)
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


def _column_entropies(codes: IntArray) -> FloatArray:
    n, d = codes.shape
    counts = np.bincount((np.arange(d) * N_BINS + codes).ravel(), minlength=d * N_BINS)
    p = counts.reshape(d, N_BINS) / n
    return np.asarray(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1))


def mutual_information(codes: IntArray, y: IntArray, n_y: int) -> FloatArray:
    """Plug-in mutual information (nats) between each binned column and ``y``."""
    n, d = codes.shape
    index = (np.arange(d) * N_BINS + codes) * n_y + y[:, None]
    joint = np.bincount(index.ravel(), minlength=d * N_BINS * n_y).reshape(d, N_BINS, n_y) / n
    p_x = joint.sum(axis=2, keepdims=True)
    p_y = np.bincount(y, minlength=n_y)[None, None, :] / n
    expected = p_x * p_y
    ratio = np.where(joint > 0, joint / np.where(expected > 0, expected, 1.0), 1.0)
    return np.asarray(np.maximum((joint * np.log(ratio)).sum(axis=(1, 2)), 0.0))
