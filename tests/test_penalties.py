"""Per-feature L2 penalties by implicit hypergradients (slem.automl.penalties)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slem.automl import penalties as pen
from slem.automl.penalties import inner_solve, penalty_problem, tune_penalties
from slem.bilevel import hypergrad
from slem.errors import SlemError


def _data(
    model: str, n: int = 120, d: int = 6, classes: int = 2, seed: int = 0, scale: float = 1.5
):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = np.zeros((d, max(classes, 1)))  # the same true model for every seed (split)
    w[:3] = np.random.default_rng(99).normal(size=(3, w.shape[1])) * scale  # 3 informative
    z = x @ w
    if model == "ridge":
        y = z[:, 0] + 0.5 * rng.normal(size=n)
    elif classes == 2:
        y = (z[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    else:
        y = (z + rng.gumbel(size=z.shape)).argmax(1)
    return x, y


def _tensors(model: str, x: np.ndarray, y: np.ndarray, classes: int):
    xt = torch.as_tensor(x)
    if model == "ridge":
        return xt, torch.as_tensor(y[:, None], dtype=torch.float64), 1
    if classes == 2:
        return xt, torch.as_tensor(y, dtype=torch.float64), 1
    return xt, torch.as_tensor(y, dtype=torch.long), classes


def _val_loss(model, groups, phi, train, val, k):
    d = train[0].shape[1]
    zero = {"coef": torch.zeros(d, k, dtype=torch.float64), "intercept": torch.zeros(k).double()}
    params, _, _ = inner_solve(model, groups, phi, train, zero, tol=5e-8, iterations=3000)
    problem = penalty_problem(model, groups, params, phi)
    return problem.outer_loss(params, {"log_penalty": phi}, val), params


@pytest.mark.parametrize(("model", "classes"), [("logistic", 2), ("logistic", 3), ("ridge", 1)])
def test_hypergradient_matches_finite_differences(model: str, classes: int) -> None:
    x, y = _data(model, classes=classes)
    xv, yv = _data(model, classes=classes, seed=1)
    *train_xy, k = _tensors(model, x, y, classes)
    *val_xy, _ = _tensors(model, xv, yv, classes)
    train, val = tuple(train_xy), tuple(val_xy)
    groups = np.array([0, 0, 1, 1, 2, 2])
    phi = torch.tensor([-3.0, -2.0, -1.0], dtype=torch.float64)
    _, params = _val_loss(model, groups, phi, train, val, k)
    problem = penalty_problem(model, groups, params, phi)
    result = hypergrad(
        problem, "implicit", inner_batch=train, outer_batch=val, solver="cg", tol=1e-12
    )
    eps = 1e-3
    fd = []
    for g in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[g] = eps
        up, _ = _val_loss(model, groups, phi + e, train, val, k)
        down, _ = _val_loss(model, groups, phi - e, train, val, k)
        fd.append(float(up - down) / (2 * eps))
    got = result.grads["log_penalty"].numpy()
    np.testing.assert_allclose(got, fd, rtol=1e-3, atol=1e-7)
    # the structured path: Newton's (or ridge's) factor, closed-form hypergradient, and the
    # engine's solver="direct" (given that factor, or building the dense Hessian itself)
    d = train[0].shape[1]
    zero = {"coef": torch.zeros(d, k, dtype=torch.float64), "intercept": torch.zeros(k).double()}
    params2, _, norm, structure = pen._solve(
        model, groups, phi, train, zero, 1e-10, 100, 20, "newton"
    )
    assert norm <= 1e-10 and structure is not None
    index = torch.as_tensor(groups)
    # the search's default tolerance (1e-6 relative residual) within 1e-4 of a tight solve
    loose, _, _ = pen._structured_hypergradient(structure, val, index, 3)
    closed, loss, _ = pen._structured_hypergradient(structure, val, index, 3, rtol=1e-10)
    assert loss == pytest.approx(result.outer_loss, rel=1e-8)
    np.testing.assert_allclose(closed.numpy(), got, rtol=1e-6, atol=1e-10)
    assert float(np.linalg.norm(loose.numpy() - got)) <= 1e-4 * float(np.linalg.norm(got))
    problem2 = penalty_problem(model, groups, params2, phi)
    if structure.model == "ridge":
        solve = structure.curvature.solve
    else:  # a fresh factor at the solution
        solve = structure.objective.curvature(structure.p).solve
    for options in ({"hessian_solve": solve}, {}):
        direct = hypergrad(
            problem2, "implicit", inner_batch=train, outer_batch=val, solver="direct", **options
        )
        np.testing.assert_allclose(direct.grads["log_penalty"].numpy(), got, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("classes", [2, 4])
def test_newton_reaches_stationarity_and_matches_lbfgs(classes: int) -> None:
    x, y = _data("logistic", n=150, d=8, classes=classes)
    xt, yt, k = _tensors("logistic", x, y, classes)
    groups = np.arange(8)
    phi = torch.linspace(-6.0, 0.0, 8, dtype=torch.float64)  # ill-conditioned on purpose
    zero = {"coef": torch.zeros(8, k, dtype=torch.float64), "intercept": torch.zeros(k).double()}
    newton, steps, norm = inner_solve("logistic", groups, phi, (xt, yt), zero, tol=1e-9)
    assert norm <= 1e-9 and steps <= 30
    lbfgs, _, _ = inner_solve(
        "logistic", groups, phi, (xt, yt), zero, tol=1e-7, iterations=3000, method="lbfgs"
    )  # (L-BFGS stalls near 1e-8 here; Newton does not)
    for name in ("coef", "intercept"):
        np.testing.assert_allclose(newton[name], lbfgs[name], atol=1e-5)
    # a warm start from the solution at nearby penalties takes a few steps
    _, warm, norm = inner_solve("logistic", groups, phi + 0.3, (xt, yt), newton, tol=1e-9)
    assert norm <= 1e-9 and warm <= 4


def test_newton_and_lbfgs_searches_agree() -> None:
    x, y = _data("logistic", n=150, d=6, classes=3)
    xv, yv = _data("logistic", n=200, d=6, classes=3, seed=1)
    kw = {"outer_steps": 4, "init": 1e-2, "inner_tol": 1e-7}
    newton = tune_penalties(x, y, xv, yv, **kw)
    lbfgs = tune_penalties(x, y, xv, yv, inner_method="lbfgs", cg_tol=1e-12, **kw)
    for a, b in zip(newton.trajectory, lbfgs.trajectory, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        np.testing.assert_allclose(a["penalties"], b["penalties"], rtol=1e-4)


def test_prior_pulls_penalties_together() -> None:
    x, y = _data("logistic", n=150, d=12, scale=0.7)
    xv, yv = _data("logistic", n=100, d=12, seed=1, scale=0.7)
    kw = {"outer_steps": 15, "init": 1e-2, "patience": None}
    free = tune_penalties(x, y, xv, yv, **kw)
    tied = tune_penalties(x, y, xv, yv, prior=1.0, **kw)
    assert np.log(tied.penalties).std() < np.log(free.penalties).std()
    assert tied.settings["prior"] == 1.0
    with pytest.raises(SlemError, match="prior must be non-negative"):
        tune_penalties(x, y, xv, yv, prior=-1.0, outer_steps=1)


def test_direct_solver_errors_are_one_line() -> None:
    x, y = _data("ridge", n=40, d=3)
    xt, yt, _ = _tensors("ridge", x, y, 1)
    phi = torch.zeros(1, dtype=torch.float64)
    params = {"coef": torch.zeros(3, 1, dtype=torch.float64), "intercept": torch.zeros(1).double()}
    problem = penalty_problem("ridge", np.zeros(3, dtype=np.int64), params, phi)
    batch = (xt, yt)
    with pytest.raises(SlemError, match="needs solver='direct'") as exc:
        hypergrad(problem, "implicit", inner_batch=batch, outer_batch=batch, hessian_solve=abs)
    _one_line(exc)
    with pytest.raises(SlemError, match="same shape") as exc:
        hypergrad(
            problem,
            "implicit",
            inner_batch=batch,
            outer_batch=batch,
            solver="direct",
            hessian_solve=lambda v: v[:1],
        )
    _one_line(exc)


def test_per_feature_penalties_find_the_noise_features() -> None:
    x, y = _data("logistic", n=150, d=12, scale=0.7)
    xv, yv = _data("logistic", n=300, d=12, seed=1, scale=0.7)
    result = tune_penalties(x, y, xv, yv, groups="feature", outer_steps=20, init=1e-2, lr=0.3)
    assert result.val_loss < result.initial_val_loss - 1e-3
    assert np.median(result.penalties[3:]) > 3 * np.median(result.penalties[:3])
    assert len(result.trajectory) >= result.best_step + 1
    row = result.trajectory[0]
    assert set(row) >= {"step", "val_loss", "penalties", "hypergrad_norm", "inner_iterations"}
    assert len(row["penalties"]) == 12
    proba = result.predict_proba(xv)
    assert proba.shape == (300, 2) and np.allclose(proba.sum(1), 1)
    loss = -np.mean(np.log(proba[np.arange(300), yv]))
    assert loss == pytest.approx(result.val_loss, rel=1e-6)
    assert set(result.predict(xv)) <= {0, 1}


def test_ridge_and_global_groups() -> None:
    x, y = _data("ridge", n=100, d=8)
    xv, yv = _data("ridge", n=200, d=8, seed=1)
    result = tune_penalties(x, y, xv, yv, model="ridge", groups="global", outer_steps=10)
    assert result.penalties.shape == (1,)
    mse = float(np.mean((result.predict(xv) - yv) ** 2))
    assert mse == pytest.approx(result.val_loss, rel=1e-6)
    assert result.val_loss <= result.initial_val_loss
    with pytest.raises(SlemError, match="ridge model has predict"):
        result.predict_proba(xv)


def test_multiclass_and_group_ids() -> None:
    x, y = _data("logistic", n=150, d=6, classes=3)
    labels = np.array(["a", "b", "c"])[y]
    result = tune_penalties(
        x, labels, x, labels, groups=np.array([5, 5, 7, 7, 9, 9]), outer_steps=3
    )
    assert result.penalties.shape == (3,)
    assert result.coef.shape == (6, 3)
    assert set(result.predict(x)) <= {"a", "b", "c"}


def _one_line(exc: pytest.ExceptionInfo[SlemError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_not_stationary_is_one_line_error() -> None:
    x, y = _data("logistic", n=100, d=6)
    with pytest.raises(SlemError) as exc:
        tune_penalties(x, y, x, y, inner_iterations=2, inner_tol=1e-10, outer_steps=2)
    message = _one_line(exc)
    assert "not at a stationary point" in message
    assert "inner_iterations" in message and "inner_tol" in message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "x_val": a["x_val"][:, :3]}, "features but the training data has"),
        (lambda a: {**a, "y_train": a["y_train"][:-1]}, "rows but its features have"),
        (lambda a: {**a, "x_train": np.where(a["x_train"] > 2, np.nan, a["x_train"])}, "NaN"),
        (lambda a: {**a, "y_train": np.zeros_like(a["y_train"])}, "only one class"),
        (lambda a: {**a, "y_val": a["y_val"] + 5}, "not in y_train"),
        (lambda a: {**a, "groups": np.arange(3)}, "integer group ids"),
        (lambda a: {**a, "groups": "layer"}, "unknown groups"),
        (lambda a: {**a, "model": "svm"}, "unknown model"),
        (lambda a: {**a, "x_train": a["x_train"][:, 0]}, "must be 2-D"),
        (lambda a: {**a, "init": -1.0}, "init must be positive"),
    ],
)
def test_bad_inputs_are_one_line_errors(change, match) -> None:
    x, y = _data("logistic", n=60, d=6)
    args = {"x_train": x, "y_train": y, "x_val": x, "y_val": y, "outer_steps": 1}
    with pytest.raises(SlemError, match=match) as exc:
        tune_penalties(**change(args))
    _one_line(exc)


def test_penalty_bounds_are_respected() -> None:
    x, y = _data("logistic", n=80, d=6)
    result = tune_penalties(x, y, x, y, outer_steps=6, lr=2.0, bounds=(1e-3, 1e-1))
    for row in result.trajectory:
        assert all(1e-3 * (1 - 1e-9) <= p <= 1e-1 * (1 + 1e-9) for p in row["penalties"])
    assert math.isfinite(result.val_loss)
