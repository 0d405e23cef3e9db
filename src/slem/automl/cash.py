"""Combined algorithm selection and hyperparameter optimization (CASH) over scikit-learn.

:func:`cash_space` is one conditional space: the model family first, then the family's own
hyperparameters and its preprocessing (imputation is always median; scaling is a choice for
the families that are sensitive to it, never for trees). :func:`build_pipeline` turns a
trial's values into an unfitted ``sklearn`` pipeline; :func:`save_pipeline` and
:func:`load_pipeline` write and read a fitted one with skops (no pickle).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slem.automl.space import Param, SearchSpace
from slem.errors import SlemError

FAMILIES = ("logreg", "svm", "random_forest", "extra_trees", "hist_gb", "knn", "mlp")
SCALED = ("logreg", "svm", "knn", "mlp")
SCALERS = ("standard", "robust", "quantile", "none")


def _when(*families: str) -> dict[str, tuple[str, ...]]:
    return {"family": families}


def cash_space(families: Sequence[str] = FAMILIES) -> SearchSpace:
    """The CASH space restricted to ``families`` (all seven by default)."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise SlemError(
            f"CASH families {unknown or '[]'} unknown or empty; use any of {', '.join(FAMILIES)}"
        )
    fams = tuple(families)
    params = [Param("family", "categorical", choices=fams)]
    scaled = tuple(f for f in fams if f in SCALED)
    if scaled:
        params.append(Param("scaler", "categorical", choices=SCALERS, when=_when(*scaled)))
    if "logreg" in fams:
        params += [
            Param("logreg.C", "float", 1e-3, 1e3, log=True, when=_when("logreg")),
            Param(
                "logreg.class_weight",
                "categorical",
                choices=("none", "balanced"),
                when=_when("logreg"),
            ),
        ]
    if "svm" in fams:
        params += [
            Param("svm.C", "float", 1e-2, 1e3, log=True, when=_when("svm")),
            Param(
                "svm.kernel", "categorical", choices=("rbf", "poly", "linear"), when=_when("svm")
            ),
            Param("svm.gamma", "float", 1e-4, 10.0, log=True, when={"svm.kernel": ("rbf", "poly")}),
            Param("svm.degree", "int", 2, 4, when={"svm.kernel": ("poly",)}),
            Param(
                "svm.class_weight", "categorical", choices=("none", "balanced"), when=_when("svm")
            ),
        ]
    for tree in ("random_forest", "extra_trees"):
        if tree in fams:
            params += [
                Param(f"{tree}.n_estimators", "int", 50, 300, log=True, when=_when(tree)),
                Param(f"{tree}.max_features", "float", 0.1, 1.0, when=_when(tree)),
                Param(f"{tree}.min_samples_leaf", "int", 1, 20, log=True, when=_when(tree)),
                Param(
                    f"{tree}.class_weight",
                    "categorical",
                    choices=("none", "balanced"),
                    when=_when(tree),
                ),
            ]
    if "hist_gb" in fams:
        params += [
            Param("hist_gb.learning_rate", "float", 0.01, 0.5, log=True, when=_when("hist_gb")),
            Param("hist_gb.max_leaf_nodes", "int", 4, 128, log=True, when=_when("hist_gb")),
            Param("hist_gb.min_samples_leaf", "int", 2, 50, log=True, when=_when("hist_gb")),
            Param("hist_gb.l2_regularization", "float", 1e-6, 1.0, log=True, when=_when("hist_gb")),
            Param("hist_gb.max_iter", "int", 50, 300, log=True, when=_when("hist_gb")),
        ]
    if "knn" in fams:
        params += [
            Param("knn.n_neighbors", "int", 1, 50, log=True, when=_when("knn")),
            Param("knn.weights", "categorical", choices=("uniform", "distance"), when=_when("knn")),
        ]
    if "mlp" in fams:
        params += [
            Param("mlp.width", "int", 16, 256, log=True, when=_when("mlp")),
            Param("mlp.depth", "int", 1, 3, when=_when("mlp")),
            Param("mlp.alpha", "float", 1e-6, 1e-1, log=True, when=_when("mlp")),
            Param("mlp.learning_rate_init", "float", 1e-4, 1e-1, log=True, when=_when("mlp")),
        ]
    return SearchSpace(params)


def build_pipeline(config: Mapping[str, Any], seed: int = 0) -> Any:
    """An unfitted pipeline (impute -> [scale] -> model) from a CASH configuration."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import QuantileTransformer, RobustScaler, StandardScaler
    from sklearn.svm import SVC

    family = config.get("family")
    if family not in FAMILIES:
        raise SlemError(f"CASH family {family!r} unknown; use any of {', '.join(FAMILIES)}")

    def p(name: str) -> Any:
        key = f"{family}.{name}"
        if key not in config:
            raise SlemError(f"CASH configuration for {family} lacks '{key}'")
        return config[key]

    def weight(name: str = "class_weight") -> str | None:
        return None if p(name) == "none" else "balanced"

    model: Any
    if family == "logreg":
        model = LogisticRegression(C=p("C"), class_weight=weight(), max_iter=2000)
    elif family == "svm":
        kernel = p("kernel")
        model = SVC(
            C=p("C"),
            kernel=kernel,
            gamma=p("gamma") if kernel != "linear" else "scale",
            degree=p("degree") if kernel == "poly" else 3,
            class_weight=weight(),
            max_iter=200_000,  # a bound on pathological (C, gamma) pairs; ~seconds
            random_state=seed,
        )
    elif family in ("random_forest", "extra_trees"):
        cls = RandomForestClassifier if family == "random_forest" else ExtraTreesClassifier
        model = cls(
            n_estimators=p("n_estimators"),
            max_features=p("max_features"),
            min_samples_leaf=p("min_samples_leaf"),
            class_weight=weight(),
            random_state=seed,
            n_jobs=1,
        )
    elif family == "hist_gb":
        model = HistGradientBoostingClassifier(
            learning_rate=p("learning_rate"),
            max_leaf_nodes=p("max_leaf_nodes"),
            min_samples_leaf=p("min_samples_leaf"),
            l2_regularization=p("l2_regularization"),
            max_iter=p("max_iter"),
            early_stopping=False,
            random_state=seed,
        )
    elif family == "knn":
        model = KNeighborsClassifier(n_neighbors=p("n_neighbors"), weights=p("weights"))
    else:
        model = MLPClassifier(
            hidden_layer_sizes=(p("width"),) * p("depth"),
            alpha=p("alpha"),
            learning_rate_init=p("learning_rate_init"),
            max_iter=200,
            early_stopping=False,
            random_state=seed,
        )
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    scaler = config.get("scaler", "none") if family in SCALED else "none"
    if scaler == "standard":
        steps.append(("scale", StandardScaler()))
    elif scaler == "robust":
        steps.append(("scale", RobustScaler()))
    elif scaler == "quantile":
        steps.append(("scale", QuantileTransformer(n_quantiles=100, random_state=seed)))
    steps.append(("model", model))
    return Pipeline(steps)


#: the modules whose types a saved pipeline may hold (skops refuses every other type)
TRUSTED_MODULES = ("sklearn", "numpy", "scipy", "slem")


def save_pipeline(pipeline: Any, path: str | Path) -> Path:
    """Write a fitted pipeline with skops (``skops.io.dump``: no pickle), atomically."""
    import skops.io

    from slem.rundir import atomic_write_bytes

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    skops.io.dump(pipeline, buffer)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def load_pipeline(path: str | Path) -> Any:
    """A pipeline written by :func:`save_pipeline` (e.g. ``OUT/refit/pipeline.skops`` of
    ``slem hpo --refit``), loaded with ``skops.io.load``: the types it holds must all come
    from scikit-learn, NumPy, SciPy or slem (:data:`TRUSTED_MODULES`); nothing is unpickled.

    Raises:
        SlemError: the file is missing, not a skops file, or holds a type from another
            module (named; such a file is not loaded).
    """
    import skops.io

    p = Path(path)
    if not p.is_file():
        raise SlemError(f"no pipeline at '{p}'; write one with 'slem hpo CONFIG.yaml --refit'")
    try:
        untrusted = skops.io.get_untrusted_types(file=p)
    except Exception as exc:  # a zip/JSON error of a damaged or foreign file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SlemError(
            f"{p} is not a skops pipeline file ({first}); refit with 'slem hpo --refit'"
        ) from None
    foreign = [t for t in untrusted if t.split(".", 1)[0] not in TRUSTED_MODULES]
    if foreign:
        raise SlemError(
            f"{p} holds types outside {', '.join(TRUSTED_MODULES)} ({', '.join(foreign[:3])}); "
            "it was not written by slem: not loaded"
        )
    try:
        return skops.io.load(p, trusted=untrusted)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SlemError(f"{p} cannot be loaded ({first}); refit with 'slem hpo --refit'") from None


def pipeline_steps(pipeline: Any) -> list[dict[str, Any]]:
    """A fitted or unfitted pipeline in readable form: per step its name, class and the
    parameters that differ from the class's defaults (JSON/YAML-ready)."""
    out: list[dict[str, Any]] = []
    for name, step in pipeline.steps:
        cls = type(step)
        defaults = cls().get_params(deep=False)
        params = {
            k: _plain(v)
            for k, v in step.get_params(deep=False).items()
            if k not in defaults or not _same(_plain(defaults[k]), _plain(v))
        }
        out.append({"step": name, "class": f"{cls.__module__.split('._')[0]}.{cls.__name__}"})
        out[-1]["params"] = params
    return out


def _same(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and a != a and b != b
    return both_nan or bool(a == b)


def _plain(value: Any) -> Any:
    """A parameter value as plain YAML/JSON data (NumPy scalars as numbers, tuples as
    lists)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)
