"""Task construction: disjoint splits, clean meta/test sets, seeding, features, bad configs."""

from __future__ import annotations

import numpy as np
import pytest

from slem.data import DataConfig, LoadOptions, build_task, group_by_size, load_dataset, make_task
from slem.errors import SlemError


@pytest.fixture(scope="module")
def mnist1d() -> object:
    return load_dataset("mnist1d", LoadOptions(size=4000))


def test_meta_set_is_clean_and_disjoint(mnist1d: object) -> None:
    task = make_task(mnist1d, noise="symmetric:0.4", meta_per_class=10)  # type: ignore[arg-type]
    assert task.meta is not None and len(task.meta) == 100
    assert np.bincount(task.meta.y).tolist() == [10] * 10
    np.testing.assert_array_equal(task.meta.y, task.meta.y_true)
    pool_sets = [set(s.index.tolist()) for s in (task.train, task.val, task.meta)]
    assert not pool_sets[0] & pool_sets[2], "a meta sample is also in the training split"
    assert not pool_sets[1] & pool_sets[2] and not pool_sets[0] & pool_sets[1]
    np.testing.assert_array_equal(task.test.y, task.test.y_true)  # test stays clean
    assert len(task.test) == 800  # MNIST-1D's official test split
    assert abs(task.train.noise_rate - 0.4) < 0.01 and abs(task.val.noise_rate - 0.4) < 0.03


def test_seeds_reproduce_and_stages_are_independent(mnist1d: object) -> None:
    a = make_task(mnist1d, noise="symmetric:0.4", meta_per_class=5, seed=3)  # type: ignore[arg-type]
    b = make_task(mnist1d, noise="symmetric:0.4", meta_per_class=5, seed=3)  # type: ignore[arg-type]
    c = make_task(mnist1d, noise="symmetric:0.2", meta_per_class=5, seed=3)  # type: ignore[arg-type]
    d = make_task(mnist1d, noise="symmetric:0.4", meta_per_class=5, seed=4)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.train.y, b.train.y)
    np.testing.assert_array_equal(a.train.X, b.train.X)
    np.testing.assert_array_equal(a.train.index, c.train.index)  # noise rate leaves splits alone
    assert not np.array_equal(a.train.index, d.train.index)


def test_normalizer_uses_training_statistics_only() -> None:
    task = make_task(load_dataset("wine"), seed=0)
    np.testing.assert_allclose(task.train.X.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(task.train.X.std(axis=0), 1.0, atol=1e-4)
    assert np.abs(task.test.X.mean(axis=0)).max() > 1e-3  # test is not re-centred on itself


def test_image_normalization_is_per_channel() -> None:
    task = make_task(load_dataset("digits-images"))
    assert task.normalizer is not None and task.normalizer.mean.shape == (1, 1, 1)
    assert abs(float(task.train.X.mean())) < 1e-4


def test_imbalance_then_groups(mnist1d: object) -> None:
    task = make_task(mnist1d, imbalance=10, meta_per_class=5)  # type: ignore[arg-type]
    counts = np.bincount(task.train.y_true, minlength=10)
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.05)
    expected = counts[0] * 10.0 ** (-np.arange(10) / 9)
    np.testing.assert_allclose(counts, expected, atol=1.0)  # the training split's profile
    f = task.features
    assert f.n_groups == 3 and f.class_groups[0] == 0 and f.class_groups[-1] == 2
    assert list(f.class_groups) == sorted(f.class_groups)
    assert task.summary()["imbalance_ratio_realized"] == pytest.approx(10, rel=0.15)


def test_group_by_size() -> None:
    assert group_by_size(np.full(10, 500), 3).tolist() == [0] * 10
    assert group_by_size(np.array([500, 498, 503, 501]), 3).tolist() == [0] * 4
    groups = group_by_size(np.array([5, 1000, 50, 990, 48, 6]), 3)
    assert groups.tolist() == [2, 0, 1, 0, 1, 2]


def test_regression_task_with_target_noise() -> None:
    task = build_task(DataConfig(name="diabetes", noise="mixture:0.3", meta_size=20))  # type: ignore[arg-type]
    assert task.task_type == "regression" and task.meta is not None and len(task.meta) == 20
    assert abs(task.train.noise_rate - 0.3) < 0.02
    np.testing.assert_array_equal(task.test.y, task.test.y_true)


def test_tensors() -> None:
    task = make_task(load_dataset("iris"))
    X, y = task.train.tensors()
    assert X.dtype.is_floating_point and str(y.dtype) == "torch.int64" and len(X) == len(task.train)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"meta_per_class": 45}, "more than class 'setosa' can give"),
        ({"noise": "symmetric:1.0"}, r"outside \[0, 1\)"),
        ({"noise": "symmetric"}, "must look like KIND:RATE"),
        ({"noise": "gaussian:0.2"}, "is for regression targets"),
        ({"imbalance": 0.9}, "below 1"),
        ({"meta_size": 5}, "meta_size is for regression"),
    ],
)
def test_bad_classification_configs(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SlemError, match=message):
        make_task(load_dataset("iris"), **overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"noise": "symmetric:0.2"}, "is for class labels"),
        ({"imbalance": 10.0}, "imbalance needs class labels"),
        ({"meta_size": 10_000}, "leaves no training data"),
    ],
)
def test_bad_regression_configs(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SlemError, match=message):
        make_task(load_dataset("diabetes"), **overrides)


def test_unknown_config_field_names_it() -> None:
    with pytest.raises(SlemError, match="noize: Extra inputs are not permitted"):
        make_task(load_dataset("iris"), noize="symmetric:0.4")


def test_rare_classes_error_then_drop(tmp_path: object) -> None:
    import pandas as pd

    df = pd.DataFrame({"x": np.arange(31.0), "y": ["a"] * 15 + ["b"] * 15 + ["c"]})
    path = f"{tmp_path}/t.csv"
    df.to_csv(path, index=False)
    data = load_dataset(path, LoadOptions(target="y"))
    with pytest.raises(SlemError, match="class 'c' has 1 sample"):
        make_task(data)
    task = make_task(data, min_class_size=5)
    assert task.class_names == ("a", "b") and any("dropped 1 classes" in n for n in task.notes)
