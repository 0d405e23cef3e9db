"""Regression tests for defects found in review of the engine (each failed before its fix)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import (
    SGD,
    Adam,
    BilevelProblem,
    Params,
    WeightedProblem,
    functional,
    hypergrad,
)
from slem.errors import SlemError
from tests.conftest import central_difference

pytestmark = pytest.mark.usefixtures("float64")
F64 = torch.float64


fd = central_difference


def quadratic_maml() -> tuple[BilevelProblem, Tensor, object]:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=F64)
    A = A @ A.T / 4 + torch.eye(4, dtype=F64)
    b, c = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)

    def inner(p: Params, h: Params, batch: object) -> Tensor:
        t = p["t"]
        return 0.5 * t @ A @ t - b @ t + 0.1 * (t**3).sum()

    def outer(p: Params, h: Params, batch: object) -> Tensor:
        return ((p["t"] - c) ** 2).sum()

    init = torch.linspace(-1, 1, 4, dtype=F64)
    problem = BilevelProblem(
        {"t": init.clone()},
        {"t": init.clone()},
        inner,
        outer,
        SGD(lr=0.1),
        initial_params=lambda h: {"t": h["t"]},
    )

    def objective(h: Tensor) -> float:
        t = h.clone()
        for _ in range(3):
            tt = t.clone().requires_grad_(True)
            (gr,) = torch.autograd.grad(inner({"t": tt}, {}, None), tt)
            t = t - 0.1 * gr
        return float(outer({"t": t}, {}, None))

    return problem, init, objective


def test_maml_unrolled_matches_finite_differences_and_truncation_rules() -> None:
    problem, init, objective = quadratic_maml()
    reference = fd(objective, init)
    full = hypergrad(problem, "unrolled", inner_batch=None, outer_batch=None, steps=3)
    torch.testing.assert_close(full.grads["t"], reference, rtol=1e-7, atol=1e-9)
    same = hypergrad(problem, "unrolled", inner_batch=None, outer_batch=None, steps=3, truncate=3)
    torch.testing.assert_close(same.grads["t"], reference, rtol=1e-7, atol=1e-9)
    with pytest.raises(SlemError, match="initialization"):
        hypergrad(problem, "unrolled", inner_batch=None, outer_batch=None, steps=3, truncate=1)


def test_keep_graph_real_step_moves_batchnorm_statistics_once() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    wnet = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid()).double()
    net, vnet = functional(model), functional(wnet)
    x = torch.randn(16, 3, dtype=F64) + 3.0
    y = torch.randint(0, 2, (16,))
    problem = WeightedProblem(
        dict(model.named_parameters()),
        dict(wnet.named_parameters()),
        lambda p, b: F.cross_entropy(net(p, b[0]), b[1], reduction="none"),
        lambda h, losses, b: vnet(h, losses[:, None]).squeeze(1),
        lambda p, h, b: F.cross_entropy(net(p, b[0]), b[1]),
        SGD(lr=0.1),
    )
    steps = 5
    for _ in range(steps):
        result = hypergrad(
            problem, "lookahead", inner_batch=(x, y), outer_batch=(x, y), keep_graph=True
        )
        loss = result.diagnostics["losses"].weighted.mean()
        loss.backward()
    assert int(model[1].num_batches_tracked) == steps  # once per real step, not per forward
    assert float(model[1].running_mean.abs().max()) > 0.1
    without = hypergrad(problem, "lookahead", inner_batch=(x, y), outer_batch=(x, y))
    assert int(model[1].num_batches_tracked) == steps and without.outer_loss > 0


def test_frozen_parameters_stay_fixed_in_virtual_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    for p in model[0].parameters():
        p.requires_grad_(False)
    net = functional(model)
    x, y = torch.randn(10, 3, dtype=F64), torch.randint(0, 2, (10,))
    h0 = torch.tensor([0.2, -0.3], dtype=F64)

    def inner(p: Params, h: Params, b: object) -> Tensor:
        return (F.softplus(h["h"])[y] * F.cross_entropy(net(p, x), y, reduction="none")).mean()

    def outer(p: Params, h: Params, b: object) -> Tensor:
        return F.cross_entropy(net(p, x), y)

    problem = BilevelProblem.from_module(model, {"h": h0}, inner, outer, SGD(lr=0.5))
    assert set(problem.params) == {"2.weight", "2.bias"}

    def objective(h: Tensor) -> float:
        head = {
            n: p.detach().clone().requires_grad_(True)
            for n, p in model.named_parameters()
            if n.startswith("2.")
        }
        grads = torch.autograd.grad(inner(head, {"h": h}, None), list(head.values()))
        new = {n: t - 0.5 * g for (n, t), g in zip(head.items(), grads, strict=True)}
        return float(outer(new, {}, None).detach())

    result = hypergrad(problem, "lookahead", inner_batch=None, outer_batch=None)
    torch.testing.assert_close(result.grads["h"], fd(objective, h0), rtol=1e-6, atol=1e-10)


def test_implicit_averages_all_inner_batches() -> None:
    g = torch.Generator().manual_seed(0)
    Xs = [torch.randn(20, 3, generator=g, dtype=F64) for _ in range(2)]
    ys = [torch.randn(20, generator=g, dtype=F64) for _ in range(2)]
    Xv, yv = torch.randn(15, 3, generator=g, dtype=F64), torch.randn(15, generator=g, dtype=F64)
    lam = torch.tensor(0.3, dtype=F64)

    def inner(p: Params, h: Params, b: int) -> Tensor:
        t = p["t"]
        return ((Xs[b] @ t - ys[b]) ** 2).mean() / 2 + 0.5 * h["lam"] * (t * t).sum()

    def outer(p: Params, h: Params, b: object) -> Tensor:
        return ((Xv @ p["t"] - yv) ** 2).mean() / 2

    X, Y = torch.cat(Xs), torch.cat(ys)
    A = X.T @ X / len(Y) + lam * torch.eye(3, dtype=F64)
    theta = torch.linalg.solve(A, X.T @ Y / len(Y))
    v = Xv.T @ (Xv @ theta - yv) / len(yv)
    exact = -(torch.linalg.solve(A, v) * theta).sum()
    problem = BilevelProblem({"t": theta}, {"lam": lam}, inner, outer, SGD(lr=0.1))
    result = hypergrad(problem, "implicit", inner_batches=[0, 1], outer_batch=None)
    assert float(abs(result.grads["lam"] - exact) / abs(exact)) < 1e-8


def test_implicit_refuses_adamw_decoupled_decay() -> None:
    problem = BilevelProblem(
        {"t": torch.ones(2, dtype=F64)},
        {"h": torch.tensor(1.0, dtype=F64)},
        lambda p, h, b: (h["h"] * p["t"] ** 2).sum(),
        lambda p, h, b: p["t"].sum(),
        Adam(lr=0.1, weight_decay=0.1, decoupled=True),
    )
    with pytest.raises(SlemError, match="decoupled"):
        hypergrad(problem, "implicit", inner_batch=None, outer_batch=None)


def test_adam_state_from_torch_keeps_per_parameter_steps() -> None:
    a = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    b = torch.tensor([0.5], dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=0.01)
    for step in range(5):  # b gets a gradient only in the last two steps
        opt.zero_grad()
        loss = (a**2).sum() + ((b**2).sum() if step >= 3 else 0.0 * b.sum())
        if step < 3:
            b.grad = None
        loss.backward()
        if step < 3:
            b.grad = None
        opt.step()
    params = {"a": a.detach().clone(), "b": b.detach().clone()}
    ours = Adam(lr=0.01)
    state = ours.state_from_torch(opt, {"a": a, "b": b})
    assert state["step"] == {"a": 5, "b": 2}
    grads = {"a": 2 * params["a"], "b": 2 * params["b"]}
    new, _ = ours.update(params, grads, state, {})
    opt.zero_grad()
    ((a**2).sum() + (b**2).sum()).backward()
    opt.step()
    torch.testing.assert_close(new["a"], a.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(new["b"], b.detach(), rtol=1e-10, atol=1e-12)


def test_sgd_momentum_state_gives_the_exact_next_step() -> None:
    w = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    params = {"w": w.detach().clone()}
    sgd = SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    new, _ = sgd.update(params, {"w": 2 * params["w"]}, sgd.state_from_torch(opt, {"w": w}), {})
    opt.zero_grad()
    (w**2).sum().backward()
    opt.step()
    torch.testing.assert_close(new["w"], w.detach(), rtol=1e-12, atol=1e-14)


def test_user_type_errors_pass_through_and_option_typos_are_named() -> None:
    def inner(p: Params, h: Params, b: object) -> Tensor:
        return F.mse_loss(p["t"], h["h"], reductoin="sum")  # type: ignore[call-arg]

    problem = BilevelProblem(
        {"t": torch.ones(2, dtype=F64)},
        {"h": torch.zeros(2, dtype=F64)},
        inner,
        lambda p, h, b: p["t"].sum(),
        SGD(lr=0.1),
    )
    with pytest.raises(TypeError, match="reductoin"):
        hypergrad(problem, "unrolled", inner_batch=None, outer_batch=None)
    with pytest.raises(SlemError, match=r"its options are .*steps"):
        hypergrad(problem, "unrolled", inner_batch=None, outer_batch=None, stesp=2)


def test_accumulate_into_a_bare_tensor() -> None:
    h = torch.tensor([0.5, 0.1], dtype=F64, requires_grad=True)
    problem = BilevelProblem(
        {"t": torch.ones(2, dtype=F64)},
        h,
        lambda p, hy, b: (hy["hyper"] * p["t"] ** 2).sum(),
        lambda p, hy, b: (p["t"] ** 2).sum(),
        SGD(lr=0.1),
    )
    result = hypergrad(problem, "lookahead", inner_batch=None, outer_batch=None)
    result.accumulate_into(h)
    assert h.grad is not None and torch.equal(h.grad, result.grads["hyper"])
