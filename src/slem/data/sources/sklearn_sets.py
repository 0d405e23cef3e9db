"""scikit-learn's bundled datasets (shipped inside the sklearn wheel, no download)."""

from __future__ import annotations

import numpy as np

from slem.data.dataset import Dataset

_UCI = "CC BY 4.0 (UCI Machine Learning Repository), as bundled with scikit-learn"


def load_digits(as_images: bool = False) -> Dataset:
    """8x8 handwritten digits, 1,797 samples, 10 classes; flat (64,) or images (1, 8, 8)."""
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    X = bunch.data.astype(np.float32) / 16.0
    if as_images:
        X = X.reshape(-1, 1, 8, 8)
    return Dataset(
        name="digits-images" if as_images else "digits",
        X=X,
        y=bunch.target.astype(np.int64),
        task_type="classification",
        source="scikit-learn load_digits (UCI optical recognition of handwritten digits)",
        license=_UCI,
        class_names=tuple(str(c) for c in bunch.target_names),
        feature_names=() if as_images else tuple(bunch.feature_names),
        notes=("pixel values scaled from 0..16 to 0..1",),
    )


def _table(name: str, loader_name: str, source: str, license: str, classification: bool) -> Dataset:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader_name)()
    y = bunch.target.astype(np.int64 if classification else np.float64)
    class_names = tuple(str(c) for c in bunch.target_names) if classification else ()
    return Dataset(
        name=name,
        X=bunch.data.astype(np.float32),
        y=y,
        task_type="classification" if classification else "regression",
        source=source,
        license=license,
        class_names=class_names,
        feature_names=tuple(str(f) for f in bunch.feature_names),
    )


def load_wine() -> Dataset:
    """Wine recognition: 178 samples, 13 chemical features, 3 cultivars."""
    return _table("wine", "load_wine", "scikit-learn load_wine (UCI wine)", _UCI, True)


def load_breast_cancer() -> Dataset:
    """Breast cancer Wisconsin (diagnostic): 569 samples, 30 features, 2 classes."""
    return _table(
        "breast_cancer",
        "load_breast_cancer",
        "scikit-learn load_breast_cancer (UCI breast cancer Wisconsin diagnostic)",
        _UCI,
        True,
    )


def load_iris() -> Dataset:
    """Fisher's iris: 150 samples, 4 features, 3 species."""
    return _table("iris", "load_iris", "scikit-learn load_iris (UCI iris)", _UCI, True)


def load_diabetes() -> Dataset:
    """Diabetes progression (Efron et al. 2004): 442 samples, 10 features, regression."""
    return _table(
        "diabetes",
        "load_diabetes",
        "scikit-learn load_diabetes (Efron, Hastie, Johnstone & Tibshirani 2004)",
        "BSD-3-Clause, as distributed with scikit-learn",
        False,
    )
