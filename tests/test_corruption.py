"""Statistical checks of every corruption: realized rates, profiles, and seeded repeatability."""

from __future__ import annotations

import numpy as np
import pytest

from slem.data import (
    instance_noise,
    long_tail,
    long_tail_counts,
    pairflip_noise,
    regression_noise,
    symmetric_noise,
)
from slem.errors import SlemError

C = 10


def labels_10k(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, C, 10_000)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_symmetric_rate_and_uniformity(rate: float) -> None:
    y = labels_10k()
    noise = symmetric_noise(y, rate, C, rng())
    assert abs(noise.realized_rate - rate) < 0.015  # within 1.5 points on 10k labels
    np.testing.assert_array_equal(noise.true_labels, y)
    np.testing.assert_array_equal(noise.noisy_mask, noise.labels != y)
    # flips are uniform over the *other* classes: no self-flips, off-diagonal near rate/(C-1)
    emp = noise.realized_transition()
    off = emp[~np.eye(C, dtype=bool)]
    assert abs(off.mean() - rate / (C - 1)) < 0.003
    assert off.std() < 0.01
    np.testing.assert_allclose(noise.transition.sum(axis=1), 1.0)


def test_pairflip_default_and_user_map() -> None:
    y = labels_10k()
    noise = pairflip_noise(y, 0.4, C, rng())
    flipped = noise.noisy_mask
    np.testing.assert_array_equal(noise.labels[flipped], (y[flipped] + 1) % C)
    assert abs(noise.realized_rate - 0.4) < 0.015
    custom = pairflip_noise(y, 0.3, C, rng(), mapping={0: 5, 5: 0})
    assert set(np.unique(y[custom.noisy_mask])) == {0, 5}
    np.testing.assert_array_equal(custom.labels[custom.noisy_mask], 5 - y[custom.noisy_mask])
    assert custom.transition[0, 5] == pytest.approx(0.3) and custom.transition[1, 1] == 1.0
    with pytest.raises(SlemError, match=r"outside 0\.\.9"):
        pairflip_noise(y, 0.3, C, rng(), mapping={0: 12})


def test_instance_noise_depends_on_features() -> None:
    gen = np.random.default_rng(1)
    y = labels_10k()
    X = gen.normal(size=(10_000, 20)) + y[:, None] * 0.3
    noise = instance_noise(y, X, 0.4, C, rng())
    assert abs(noise.realized_rate - 0.4) < 0.02
    assert noise.sample_rows is not None
    np.testing.assert_allclose(noise.sample_rows.sum(axis=1), 1.0)
    # per-sample flip rates vary (unlike class-conditional noise) ...
    flip_prob = 1.0 - noise.sample_rows[np.arange(len(y)), y]
    assert flip_prob.std() > 0.05
    # ... and the flip target is driven by the features: rows are far from uniform
    others = noise.sample_rows.copy()
    others[np.arange(len(y)), y] = 0
    others /= others.sum(axis=1, keepdims=True)
    assert others.max(axis=1).mean() > 2.0 / (C - 1)
    # identical inputs with the same label share one transition row
    X2 = np.vstack([X[:1], X[:1]])
    rows = instance_noise(np.array([3, 3]), X2, 0.4, C, rng()).sample_rows
    assert rows is not None
    other0 = rows[0] / (1 - rows[0, 3])
    other1 = rows[1] / (1 - rows[1, 3])
    other0[3] = other1[3] = 0
    np.testing.assert_allclose(other0, other1)  # flip targets depend on x only


@pytest.mark.parametrize("factor", [10.0, 100.0])
def test_long_tail_profile_follows_factor(factor: float) -> None:
    y = np.repeat(np.arange(C), 1000)
    imb = long_tail(y, factor, C, rng())
    counts = np.bincount(y[imb.indices], minlength=C)
    np.testing.assert_array_equal(counts, imb.class_counts)
    assert counts[0] / counts[-1] == pytest.approx(factor, rel=0.02)
    assert np.all(np.diff(counts) <= 0)
    expected = counts[0] * factor ** (-np.arange(C) / (C - 1))
    np.testing.assert_allclose(counts, expected, atol=1.0)  # exponential profile, up to flooring
    assert len(np.unique(imb.indices)) == len(imb.indices)


def test_long_tail_uses_largest_feasible_head_and_step_profile() -> None:
    counts = long_tail_counts(np.array([100, 50, 500]), 10.0)
    assert (
        counts[0] / counts[2] == pytest.approx(10.0, rel=0.1) and (counts <= [100, 50, 500]).all()
    )
    step = long_tail_counts(np.full(10, 1000), 20.0, profile="step")
    assert step.tolist() == [1000] * 5 + [50] * 5
    with pytest.raises(SlemError, match="below 1"):
        long_tail_counts(np.full(3, 10), 0.5)


def test_regression_noise_mixture() -> None:
    y = np.random.default_rng(0).normal(5.0, 2.0, 10_000)
    noise = regression_noise(y, 0.3, rng(), kind="mixture")
    assert abs(noise.realized_rate - 0.3) < 0.005
    np.testing.assert_array_equal(noise.true_targets, y)
    np.testing.assert_array_equal(noise.targets[~noise.noisy_mask], y[~noise.noisy_mask])
    assert (noise.targets[noise.noisy_mask] != y[noise.noisy_mask]).all()
    shares = np.bincount(noise.components[noise.noisy_mask], minlength=4) / noise.noisy_mask.sum()
    np.testing.assert_allclose(shares, 0.25, atol=0.03)
    out = regression_noise(y, 0.1, rng(), kind="outlier", outlier_scale=10.0)
    delta = np.abs(out.targets - y)[out.noisy_mask]
    assert delta.min() >= 0.5 * 10 * y.std() - 1e-9  # gross outliers are at least 5 std away
    gauss = regression_noise(y, 0.5, rng(), kind="gaussian", scale=0.5)
    resid = (gauss.targets - y)[gauss.noisy_mask]
    assert resid.std() == pytest.approx(0.5 * y.std(), rel=0.05)
    with pytest.raises(SlemError, match="unknown"):
        regression_noise(y, 0.1, rng(), kind="mixture", weights={"cauchy": 1.0})


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rates_outside_unit_interval_are_errors(rate: float) -> None:
    with pytest.raises(SlemError, match=r"outside \[0, 1\)"):
        symmetric_noise(labels_10k(), rate, C, rng())


def test_seeds_reproduce_exactly() -> None:
    y = labels_10k()
    X = np.random.default_rng(2).normal(size=(10_000, 5))
    for make in (
        lambda s: symmetric_noise(y, 0.4, C, rng(s)).labels,
        lambda s: pairflip_noise(y, 0.4, C, rng(s)).labels,
        lambda s: instance_noise(y, X, 0.4, C, rng(s)).labels,
        lambda s: long_tail(y, 50, C, rng(s)).indices,
        lambda s: regression_noise(X[:, 0], 0.3, rng(s)).targets,
    ):
        np.testing.assert_array_equal(make(7), make(7))
        assert not np.array_equal(make(7), make(8))
