"""Ridge regression: the hypergradient of the validation loss w.r.t. the ridge strength has a
closed form, so every method can be checked exactly (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from slem.bilevel import SGD, Adam, BilevelProblem, Params, hypergrad

pytestmark = pytest.mark.usefixtures("float64")
F64 = torch.float64


class Ridge:
    """Inner: |X theta - y|^2 / 2n + sum_j lam_j theta_j^2 / 2; outer: |Xv theta - yv|^2 / 2nv."""

    def __init__(self, per_feature: bool, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d = 5
        self.X = torch.randn(40, self.d, generator=g, dtype=F64)
        self.y = self.X @ torch.randn(self.d, generator=g, dtype=F64) + 0.5 * torch.randn(
            40, generator=g, dtype=F64
        )
        self.Xv = torch.randn(30, self.d, generator=g, dtype=F64)
        self.yv = self.Xv @ torch.randn(self.d, generator=g, dtype=F64) + 0.5 * torch.randn(
            30, generator=g, dtype=F64
        )
        self.lam = (
            torch.linspace(0.3, 1.2, self.d, dtype=F64)
            if per_feature
            else torch.tensor([0.7], dtype=F64)
        )

    def lam_vec(self, lam: Tensor) -> Tensor:
        return lam.expand(self.d)

    def inner_loss(self, params: Params, hyper: Params, batch: object) -> Tensor:
        theta = params["theta"]
        fit = ((self.X @ theta - self.y) ** 2).mean() / 2
        return fit + 0.5 * (self.lam_vec(hyper["lam"]) * theta**2).sum()

    def outer_loss(self, params: Params, hyper: Params, batch: object) -> Tensor:
        return ((self.Xv @ params["theta"] - self.yv) ** 2).mean() / 2

    def A(self) -> Tensor:
        return self.X.T @ self.X / len(self.y) + torch.diag(self.lam_vec(self.lam))

    def theta_star(self) -> Tensor:
        return torch.linalg.solve(self.A(), self.X.T @ self.y / len(self.y))

    def exact_hypergrad(self) -> Tensor:
        theta = self.theta_star()
        v = self.Xv.T @ (self.Xv @ theta - self.yv) / len(self.yv)
        per_feature = -torch.linalg.solve(self.A(), v) * theta
        return per_feature if self.lam.numel() > 1 else per_feature.sum().reshape(1)

    def lipschitz(self) -> float:
        return float(torch.linalg.eigvalsh(self.A()).max())

    def problem(self, theta: Tensor, optimizer: object) -> BilevelProblem:
        return BilevelProblem(
            params={"theta": theta.clone()},
            hyper={"lam": self.lam.clone()},
            inner_loss=self.inner_loss,
            outer_loss=self.outer_loss,
            optimizer=optimizer,
        )


def rel_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("per_feature", [False, True])
def test_implicit_cg_matches_closed_form(per_feature: bool) -> None:
    r = Ridge(per_feature)
    problem = r.problem(r.theta_star(), SGD(lr=0.1))
    result = hypergrad(problem, "implicit", inner_batch=None, outer_batch=None)
    assert rel_error(result.grads["lam"], r.exact_hypergrad()) < 1e-6
    assert result.diagnostics["relative_residual"] < 1e-8


def test_implicit_neumann_and_inner_steps() -> None:
    r = Ridge(per_feature=True)
    alpha = 1.0 / r.lipschitz()
    near = r.theta_star() + 1e-3 * torch.randn(r.d, generator=torch.Generator().manual_seed(1))
    problem = r.problem(near, SGD(lr=alpha))
    result = hypergrad(
        problem,
        "implicit",
        inner_batch=None,
        outer_batch=None,
        solver="neumann",
        alpha=alpha,
        iterations=150,
        inner_steps=150,
    )
    assert rel_error(result.grads["lam"], r.exact_hypergrad()) < 1e-6


def test_unrolled_converges_to_closed_form_as_k_grows() -> None:
    r = Ridge(per_feature=True)
    lr = 1.0 / r.lipschitz()
    exact = r.exact_hypergrad()
    errors = []
    for k in (5, 50, 500):
        result = hypergrad(
            r.problem(torch.zeros(r.d), SGD(lr=lr)),
            "unrolled",
            inner_batch=None,
            outer_batch=None,
            steps=k,
        )
        errors.append(rel_error(result.grads["lam"], exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6, errors


def test_forward_mode_equals_reverse_mode() -> None:
    r = Ridge(per_feature=True)
    problem = r.problem(torch.zeros(r.d), SGD(lr=0.2, momentum=0.5))
    rev = hypergrad(problem, "unrolled", inner_batch=None, outer_batch=None, steps=20)
    fwd = hypergrad(problem, "forward", inner_batch=None, outer_batch=None, steps=20)
    assert rel_error(fwd.grads["lam"], rev.grads["lam"]) < 1e-10
    assert fwd.outer_loss == pytest.approx(rev.outer_loss, rel=1e-12)


THETA0 = torch.linspace(-0.5, 0.5, 5, dtype=F64)


def explicit_loop(r: Ridge, k: int, optimizer: str) -> Tensor:
    """Autograd through a hand-written loop (create_graph), the reference for ITD."""
    lam = r.lam.clone().requires_grad_(True)
    theta = THETA0.clone().requires_grad_(True)
    buf = m = v = None
    for t in range(1, k + 1):
        inner = r.inner_loss({"theta": theta}, {"lam": lam}, None)
        (g,) = torch.autograd.grad(inner, theta, create_graph=True)
        if optimizer == "sgd":
            g = g + 0.01 * theta
            buf = g if buf is None else 0.9 * buf + g
            theta = theta - 0.05 * buf
        else:
            m = 0.1 * g if m is None else 0.9 * m + 0.1 * g
            v = 0.001 * g * g if v is None else 0.999 * v + 0.001 * g * g
            denom = torch.sqrt(v / (1 - 0.999**t) + 1e-16) + 1e-8
            theta = theta - 0.05 * (m / (1 - 0.9**t)) / denom
    (grad,) = torch.autograd.grad(r.outer_loss({"theta": theta}, {}, None), lam)
    return grad


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_lookahead_and_unrolled_match_explicit_autograd(optimizer: str) -> None:
    r = Ridge(per_feature=True)
    opt = SGD(lr=0.05, momentum=0.9, weight_decay=0.01) if optimizer == "sgd" else Adam(lr=0.05)
    # Adam's first step is sign(g): its one-step hypergradient is ~0, so check 2 and 7 steps
    runs = (
        ((1, "lookahead"), (7, "unrolled"))
        if optimizer == "sgd"
        else ((2, "unrolled"), (7, "unrolled"))
    )
    for k, method in runs:
        options = {"steps": k} if method == "unrolled" else {}
        result = hypergrad(
            r.problem(THETA0, opt), method, inner_batch=None, outer_batch=None, **options
        )
        reference = explicit_loop(r, k, optimizer)
        assert float(reference.norm()) > 1e-3  # a non-trivial comparison
        assert rel_error(result.grads["lam"], reference) < 1e-8


def test_first_order_drops_the_second_order_path() -> None:
    r = Ridge(per_feature=False)  # lam reaches theta only through the inner gradient
    result = hypergrad(
        r.problem(torch.zeros(r.d), SGD(lr=0.1)),
        "first_order",
        inner_batch=None,
        outer_batch=None,
        steps=5,
    )
    assert float(result.grads["lam"].abs().max()) == 0.0
