"""The **landmarker** meta-feature group: cross-validated scores of fast learners (1-NN, a
stump, naive Bayes, LDA, and stumps on a random and on the most informative feature).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slem.data.meta_feature_context import Context, FloatArray, Folds, bin_columns
from slem.data.meta_feature_groups import mutual_information


def landmarker_features(ctx: Context) -> dict[str, float]:
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


def _elite_feature(ctx: Context, chunk: int = 512) -> int:
    """The feature of highest binned MI with the class (binned target), over all features."""
    best, best_mi = 0, -math.inf
    for start in range(0, ctx.d, chunk):
        mi = mutual_information(bin_columns(ctx.X[:, start : start + chunk]), ctx.y_sub, ctx.n_y)
        j = int(np.argmax(mi))
        if mi[j] > best_mi:
            best, best_mi = start + j, float(mi[j])
    return best


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
