"""Meta-features: the registry, what each group returns, and values that mean something."""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import cache
from typing import Any

import numpy as np
import pytest

from slem.data.meta_features import FEATURE_NAMES, GROUPS, META_FEATURES, meta_features
from slem.data.registry import LoadOptions, load_dataset
from slem.data.task import Split, Task, make_task
from slem.errors import SlemError


@cache
def _task(name: str, **overrides: Any) -> Task:
    return make_task(load_dataset(name), seed=0, **overrides)


@cache
def _features(name: str, **overrides: Any) -> dict[str, float]:
    return meta_features(_task(name, **overrides))


@cache
def _regression_task() -> Task:
    task = make_task(load_dataset("diabetes"), seed=0)
    assert len(task.train) > 0
    return task


def _applies(name: str, task: Task) -> bool:
    feature = next(f for f in META_FEATURES if f.name == name)
    return task.task_type in feature.task_types


def test_registry_is_documented_and_unique() -> None:
    names = [f.name for f in META_FEATURES]
    assert len(names) == len(set(names))
    assert tuple(names) == FEATURE_NAMES
    for feature in META_FEATURES:
        assert feature.description.strip(), feature.name
        assert "\n" not in feature.description
        assert feature.group in GROUPS
        assert feature.task_types
    assert {f.group for f in META_FEATURES} == set(GROUPS)


@pytest.mark.parametrize("name", ["iris", "wine", "digits"])
def test_classification_features_all_present_and_finite(name: str) -> None:
    values = _features(name)
    assert list(values) == list(FEATURE_NAMES)
    assert all(type(v) is float for v in values.values())
    task = _task(name)
    for key, value in values.items():
        if _applies(key, task):
            assert math.isfinite(value), key
        else:  # only the regression-target statistics
            assert math.isnan(value) and key.startswith("target_"), key


def test_regression_nan_only_for_class_based_features() -> None:
    task = _regression_task()
    values = meta_features(task)
    assert list(values) == list(FEATURE_NAMES)
    for feature in META_FEATURES:
        value = values[feature.name]
        if "regression" in feature.task_types:
            assert math.isfinite(value), feature.name
        else:
            assert math.isnan(value), feature.name
    for feature in META_FEATURES:  # class-based features are the only regression nans
        if feature.group in ("simple", "statistical") and "regression" in feature.task_types:
            assert math.isfinite(values[feature.name]), feature.name
    assert values["n_samples"] == len(task.train)
    assert math.isnan(values["class_entropy"]) and math.isfinite(values["target_kurtosis"])
    assert math.isfinite(values["landmark_elite_node"])  # R² of a stump on the best feature


def test_one_nn_landmarker_sees_label_noise() -> None:
    clean = _features("digits")["landmark_1nn"]
    noisy = _features("digits", noise="symmetric:0.6")["landmark_1nn"]
    assert clean > 0.9
    assert noisy < clean - 0.3
    # the inputs are the same, so input statistics do not move
    assert _features("digits", noise="symmetric:0.6")["skewness_mean"] == pytest.approx(
        _features("digits")["skewness_mean"]
    )
    assert (
        _features("digits", noise="symmetric:0.6")["mutual_info_mean"]
        < (_features("digits")["mutual_info_mean"])
    )


def test_class_entropy_of_balanced_three_classes_is_log3_nats() -> None:
    task = _task("iris")
    assert len(set(np.bincount(task.train.y))) == 1  # iris training split is exactly balanced
    values = _features("iris")
    assert values["class_entropy"] == pytest.approx(math.log(3), abs=1e-9)
    assert values["normalized_class_entropy"] == pytest.approx(1.0)
    assert values["imbalance_ratio"] == 1.0
    assert values["class_prob_min"] == pytest.approx(1 / 3)


def test_imbalance_ratio_reflects_long_tail() -> None:
    task = _task("digits", imbalance=10)
    values = meta_features(task, groups=["simple"])
    assert values["imbalance_ratio"] == pytest.approx(task.features.imbalance_ratio)
    assert values["imbalance_ratio"] == pytest.approx(10, rel=0.15)


def test_deterministic_and_independent_of_groups() -> None:
    task = _task("digits")
    first = meta_features(task, seed=3, max_samples=500)
    second = meta_features(task, seed=3, max_samples=500)
    assert first.keys() == second.keys()
    assert all(
        a == b or (math.isnan(a) and math.isnan(b))
        for a, b in zip(first.values(), second.values(), strict=True)
    )
    for group in GROUPS:
        part = meta_features(task, seed=3, max_samples=500, groups=[group])
        assert all(
            part[k] == first[k] or (math.isnan(part[k]) and math.isnan(first[k])) for k in part
        )


def test_groups_restrict_keys() -> None:
    values = meta_features(_task("iris"), groups=["simple"])
    assert list(values) == [f.name for f in META_FEATURES if f.group == "simple"]
    both = meta_features(_task("iris"), groups=["landmarker", "simple"])
    assert list(both) == [f.name for f in META_FEATURES if f.group in ("simple", "landmarker")]
    with pytest.raises(SlemError, match="unknown meta-feature group"):
        meta_features(_task("iris"), groups=["simpel"])


def test_uses_only_the_training_split() -> None:
    task = _task("wine")
    scrambled = dataclasses.replace(
        task,
        val=dataclasses.replace(task.val, X=task.val.X * 0 + 7, y=task.val.y * 0),
        test=dataclasses.replace(task.test, X=task.test.X[::-1] * 3, y=task.test.y[::-1]),
    )
    assert meta_features(scrambled) == meta_features(task)


def test_images_are_flattened() -> None:
    values = _features("digits-images")
    assert values["n_features"] == 64
    assert values["landmark_1nn"] > 0.9
    assert all(math.isfinite(v) for k, v in values.items() if not k.startswith("target_"))


def test_mnist1d_signals() -> None:
    task = make_task(load_dataset("mnist1d", LoadOptions(size=2000)), seed=0)
    values = meta_features(task)
    assert values["n_features"] == 40
    assert values["n_classes"] == 10
    assert all(math.isfinite(v) for k, v in values.items() if not k.startswith("target_"))


def test_subsample_bounds_the_work() -> None:
    values = meta_features(_task("digits"), max_samples=300)
    assert values["n_samples"] == len(_task("digits").train)  # simple features see every row
    assert math.isfinite(values["landmark_lda"])


def test_degenerate_inputs_do_not_crash_or_warn() -> None:
    """Constant features, a class with a single sample and a tiny table."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    X[:, 0] = 0.0  # constant
    X[:, 1] = X[:, 2]  # duplicated
    y = np.array([0] * 20 + [1] * 19 + [2], dtype=np.int64)
    base = _task("iris")
    tiny = dataclasses.replace(base, train=Split.clean(X, y, np.arange(len(y))))
    constant = dataclasses.replace(
        base, train=Split.clean(np.zeros((6, 3), np.float32), y[17:23], np.arange(6))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = meta_features(tiny)
        flat = meta_features(constant)
    assert values["imbalance_ratio"] == 20.0
    assert values["constant_feature_fraction"] == pytest.approx(0.2)
    assert all(math.isfinite(values[k]) for k in values if k.startswith("landmark_"))
    assert flat["constant_feature_fraction"] == 1.0
    assert math.isnan(flat["skewness_mean"]) and math.isnan(flat["correlation_abs_mean"])
    assert math.isnan(flat["pca_first_ratio"]) and math.isnan(flat["noise_signal_ratio"])
    assert flat["feature_entropy_mean"] == 0.0


def test_empty_training_split_is_a_clear_error() -> None:
    task = _task("iris")
    train = task.train
    empty = dataclasses.replace(task, train=Split.clean(train.X[:0], train.y[:0], train.index[:0]))
    with pytest.raises(SlemError, match="empty training split"):
        meta_features(empty)


def test_stratified_subsample_keeps_every_class() -> None:
    from slem.data.meta_features import _subsample

    labels = np.array([0] * 900 + [1] * 90 + [2] * 9 + [3], dtype=np.int64)
    rows = _subsample(len(labels), 100, labels, np.random.default_rng(0))
    assert len(rows) == 100 and len(np.unique(rows)) == 100
    assert np.bincount(labels[rows]).tolist() == [89, 9, 1, 1]
    again = _subsample(len(labels), 100, labels, np.random.default_rng(0))
    assert np.array_equal(rows, again)
