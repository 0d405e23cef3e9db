"""slem.sklearn: the scikit-learn contract (every check of ``check_estimator``), pipelines,
cross-validation, pandas and string labels, meta sets, frozen methodologies, and an accuracy
check on noisy labels that fails when meta-learned weighting stops working."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from slem.methodology import MWNet
from slem.sklearn import (
    CMWNetClassifier,
    ERMClassifier,
    HWNetRegressor,
    MWNetClassifier,
    SLeMClassifier,
)

#: few epochs, one thread, the CPU: the checks fit each estimator dozens of times
FAST: dict[str, Any] = {"epochs": 8, "threads": 1, "device": "cpu"}
ESTIMATORS = [
    ERMClassifier(**FAST),
    MWNetClassifier(**FAST),
    CMWNetClassifier(**FAST),
    SLeMClassifier(**FAST),
    # the regression check asks R^2 > 0.5 on 200 rows (2 steps an epoch): more steps
    HWNetRegressor(**{**FAST, "epochs": 15, "lr": 0.1}),
]


@parametrize_with_checks(ESTIMATORS)
def test_scikit_learn_contract(estimator: Any, check: Any) -> None:
    check(estimator)


def _blobs(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(
        n, 6, n_informative=4, n_redundant=0, n_classes=3, n_clusters_per_class=1,
        class_sep=2.0, random_state=seed,
    )  # fmt: skip
    return X, y


def test_pipeline_and_cross_validation() -> None:
    X, y = _blobs()
    pipe = make_pipeline(StandardScaler(), MWNetClassifier(**FAST, standardize=False))
    assert pipe.fit(X, y).score(X, y) > 0.9
    scores = cross_val_score(ERMClassifier(**FAST), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_string_labels_and_pandas_round_trip() -> None:
    X, y = _blobs()
    names = np.array(["cat", "dog", "emu"])[y]
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    est = CMWNetClassifier(**FAST).fit(frame, pd.Series(names))
    assert list(est.classes_) == ["cat", "dog", "emu"]
    assert list(est.feature_names_in_) == list(frame.columns) and est.n_features_in_ == 6
    pred = est.predict(frame)
    assert pred.dtype.kind in "OU" and set(pred) <= {"cat", "dog", "emu"}
    assert np.mean(pred == names) > 0.9
    proba = est.predict_proba(frame)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(est.classes_[proba.argmax(1)], pred)
    np.testing.assert_allclose(np.exp(est.predict_log_proba(frame)), proba, rtol=1e-12)
    with pytest.warns(UserWarning, match="feature names"):
        est.predict(X)  # fitted with names, given none: scikit-learn's warning


def test_clone_get_params_and_fitted_attributes() -> None:
    est = MWNetClassifier(epochs=3, width=16, meta_objective="selected", threads=1)
    params = est.get_params()
    assert params["epochs"] == 3 and params["meta_objective"] == "selected"
    assert "model" in params and "overrides" in params and "random_state" in params
    copy = clone(est)
    assert copy.get_params() == params and copy is not est
    copy.set_params(epochs=4, lr=0.1)
    assert (copy.epochs, copy.lr, est.epochs) == (4, 0.1, 3)
    with pytest.raises(NotFittedError):
        copy.predict(np.zeros((2, 6)))
    X, y = _blobs()
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    copy.fit(X, y)
    assert torch.get_num_threads() == threads  # set back after fit
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's torch RNG untouched
    assert len(copy.history_) == 4 and 1 <= copy.best_epoch_ <= 4
    assert copy.meta_objective_ == "selected" and copy.n_meta_ == 0
    assert not copy.model_.training
    assert all(p.device.type == "cpu" for p in copy.model_.parameters())
    assert isinstance(copy.methodology_, MWNet)
    assert not any(k.startswith("test_") for k in copy.summary_)
    assert copy.summary_["method"] == "mwnet" and copy.summary_["epochs"] == 4
    assert clone(copy).get_params() == copy.get_params()
    assert not hasattr(clone(copy), "model_")
    again = pickle.loads(pickle.dumps(copy))
    np.testing.assert_array_equal(again.predict_proba(X), copy.predict_proba(X))


def test_same_random_state_same_fit_and_last_epoch_option() -> None:
    X, y = _blobs()
    a = ERMClassifier(**FAST, random_state=3).fit(X, y).predict_proba(X)
    b = ERMClassifier(**FAST, random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = ERMClassifier(**FAST, random_state=4).fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)
    last = ERMClassifier(**FAST, keep_best=False).fit(X, y)
    assert last.best_epoch_ == 8


def test_a_meta_set_given_to_fit() -> None:
    X, y = _blobs(360)
    labels = np.array(["a", "b", "c"])[y]
    est = MWNetClassifier(**FAST).fit(X[60:], labels[60:], X_meta=X[:60], y_meta=labels[:60])
    assert est.meta_objective_ == "clean" and est.n_meta_ == 60
    assert est.summary_["n_meta"] == 60 and est.summary_["meta_labels"] == "trusted_file"
    drawn = MWNetClassifier(**FAST, meta_objective="clean", meta_per_class=5).fit(X, labels)
    assert drawn.n_meta_ == 15 and drawn.summary_["n_train"] < 360 - 15
    default = MWNetClassifier(**FAST).fit(X, labels)
    assert default.meta_objective_ == "dac" and default.n_meta_ == 0
    with pytest.raises(ValueError, match="y_meta holds labels that y does not"):
        MWNetClassifier(**FAST).fit(X, labels, X_meta=X[:5], y_meta=["a", "b", "z", "a", "b"])
    with pytest.raises(ValueError, match="uses no meta set"):
        MWNetClassifier(**FAST, meta_objective="dac").fit(X, y, X_meta=X[:9], y_meta=y[:9])
    with pytest.raises(ValueError, match="same features"):
        MWNetClassifier(**FAST).fit(X, y, X_meta=X[:9, :3], y_meta=y[:9])
    with pytest.raises(ValueError, match="together"):
        MWNetClassifier(**FAST).fit(X, y, X_meta=X[:9])


def test_small_data_and_refusals() -> None:
    X = np.random.default_rng(0).normal(size=(6, 2))
    y = np.array([0, 0, 1, 1, 2, 2])
    # a meta set of half the smallest class; an empty validation split: the last epoch
    est = MWNetClassifier(**FAST, meta_objective="clean").fit(X, y)
    assert est.n_meta_ == 3 and est.best_epoch_ == 8
    assert est.predict(X).shape == (6,)
    with pytest.raises(ValueError, match="at least 2 per class"):
        ERMClassifier(**FAST).fit(X, [0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="at least 2 classes"):
        ERMClassifier(**FAST).fit(X, np.zeros(6))
    with pytest.raises(ValueError, match=r"optim\.epochs"):
        ERMClassifier(epochs=0).fit(X, y)
    with pytest.raises(ValueError, match="meta_objective must be one of"):
        MWNetClassifier(meta_objective="clever").fit(X, y)
    with pytest.raises(ValueError, match=r"optim\.nonsense"):
        ERMClassifier(overrides={"optim.nonsense": 1}).fit(X, y)
    r = HWNetRegressor(**FAST).fit(X, np.arange(6.0))
    assert r.meta_objective_ == "dac" and r.n_meta_ == 0  # no rows to spare for a meta set
    with pytest.raises(ValueError, match="for class labels"):
        HWNetRegressor(meta_objective="selected").fit(X, np.arange(6.0))


def test_own_model_module_or_factory() -> None:
    X, y = _blobs()
    module = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    before = [p.detach().clone() for p in module.parameters()]
    est = ERMClassifier(**FAST, model=module).fit(X, y)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    assert est.model_ is not module and est.score(X, y) > 0.85
    built: list[tuple[int, int]] = []

    def factory(n_features: int, n_outputs: int) -> nn.Module:
        built.append((n_features, n_outputs))
        return nn.Linear(n_features, n_outputs)

    assert ERMClassifier(**FAST, model=factory).fit(X, y).score(X, y) > 0.85
    assert built == [(6, 3)]
    with pytest.raises(ValueError, match=r"expected \(batch, 3\) logits"):
        ERMClassifier(**FAST, model=nn.Linear(6, 2)).fit(X, y)


def test_slem_classifier_applies_zoo_and_fitted_rules() -> None:
    X, y = _blobs()
    zoo = SLeMClassifier("label-noise", **FAST).fit(X, y)  # a bare zoo name
    assert zoo.summary_["method"] == "apply" and zoo.methodology_ is not None
    assert zoo.score(X, y) > 0.9
    rule = MWNetClassifier(**FAST).fit(X, y).methodology_
    state = {k: v.clone() for k, v in rule.state_dict().items()}
    applied = SLeMClassifier(rule, **FAST).fit(X, y)
    assert applied.score(X, y) > 0.9 and applied.n_meta_ == 0
    assert rule.state_dict().keys() == state.keys()
    assert all(torch.equal(rule.state_dict()[k], v) for k, v in state.items())  # not moved
    with pytest.raises(ValueError, match="unknown zoo methodology"):
        SLeMClassifier("zoo:nothing-here").fit(X, y)
    Xr, yr = make_regression(40, 3, random_state=0)
    hw = HWNetRegressor(**FAST).fit(Xr, yr).methodology_
    with pytest.raises(ValueError, match="regression"):
        SLeMClassifier(hw, **FAST).fit(X, y)


def test_regressor_units_and_a_meta_set() -> None:
    X, y = make_regression(300, 5, noise=1.0, random_state=0)
    y = 1000.0 + 50.0 * y  # far from standardized units
    est = HWNetRegressor(**FAST).fit(X[50:], y[50:], X_meta=X[:50], y_meta=y[:50])
    assert est.meta_objective_ == "clean" and est.n_meta_ == 50
    assert est.score(X, y) > 0.8  # in the units of y: R^2 of standardized outputs is < 0


def _noisy_labels(seed: int, n: int, rate: float) -> tuple[np.ndarray, ...]:
    """4 classes, ``rate`` of the training labels flipped to another class; clean test."""
    X, y = make_classification(
        n + 1000, 20, n_informative=10, n_classes=4, n_clusters_per_class=1, class_sep=1.5,
        random_state=seed,
    )  # fmt: skip
    Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=n, random_state=seed, stratify=y)
    rng = np.random.default_rng(seed)
    flip = rng.random(n) < rate
    noisy = ytr.copy()
    noisy[flip] = (ytr[flip] + rng.integers(1, 4, int(flip.sum()))) % 4
    return Xtr, noisy, Xte, yte


def test_mwnet_learns_through_thirty_percent_flipped_labels() -> None:
    """Trained to the last epoch (no best-epoch selection), wide enough to memorize: ERM
    fits the flipped labels, MW-Net with DAC-MR (no clean data) keeps clean accuracy."""
    Xtr, noisy, Xte, yte = _noisy_labels(0, 1000, 0.3)
    kw: dict[str, Any] = {"epochs": 30, "width": 128, "keep_best": False, "threads": 1}
    mw = MWNetClassifier(**kw, device="cpu").fit(Xtr, noisy).score(Xte, yte)
    erm = ERMClassifier(**kw, device="cpu").fit(Xtr, noisy).score(Xte, yte)
    print(f"clean test accuracy: MW-Net {mw:.3f}, ERM {erm:.3f}")
    assert mw > 0.85, (mw, erm)  # chance: 0.25
    assert mw > erm + 0.03, (mw, erm)
