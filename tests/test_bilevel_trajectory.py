"""The trajectory objective (``trajectory_weights``: the outer loss summed over the unrolled
iterates, Andrychowicz et al. 2016, eq. 3) against a hand-written autograd reference on a
tiny ridge problem in float64, for ``unrolled`` (with and without truncation) and
``first_order``; the final params and optimizer state that callers carry over; the errors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from slem.bilevel import SGD, BilevelProblem, Hypergrad, Params, hypergrad
from slem.errors import SlemError

pytestmark = pytest.mark.usefixtures("float64")
D, K, MU = 3, 4, 0.5
F64 = torch.float64


def batch(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, D, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)


BATCHES = [batch(s) for s in range(K)]
OUTER = batch(99)
THETA0 = {"w": torch.tensor([0.3, -0.2, 0.1], dtype=F64), "b": torch.tensor(0.05, dtype=F64)}
HYPER = {"log_lr": torch.tensor(math.log(0.2), dtype=F64), "reg": torch.tensor(0.3, dtype=F64)}


def mse(params: Params, b: tuple[Tensor, Tensor]) -> Tensor:
    x, y = b
    return ((x @ params["w"] + params["b"] - y) ** 2).mean()


def inner_loss(params: Params, hyper: Params, b: tuple[Tensor, Tensor]) -> Tensor:
    """The ridge penalty reaches theta only through the inner gradient (0 in first order)."""
    return mse(params, b) + hyper["reg"] * (params["w"] ** 2).sum()


def outer_loss(params: Params, hyper: Params, b: tuple[Tensor, Tensor]) -> Tensor:
    """With a direct term in the hyperparameters, which every iterate's term carries."""
    return mse(params, b) + 0.01 * hyper["reg"] ** 2


def problem() -> BilevelProblem:
    opt = SGD(lr=lambda h: h["log_lr"].exp(), momentum=MU)
    return BilevelProblem(dict(THETA0), dict(HYPER), inner_loss, outer_loss, opt)


def reference(
    weights: Sequence[float], first_order: bool, truncate: int | None = None
) -> tuple[Params, float, Params, Tensor]:
    """``sum_{t<K} w_t L_out(theta_t, batch_t) + w_K L_out(theta_K, outer)`` by plain
    autograd with hand-written SGD + momentum; steps before ``K - truncate`` untracked."""
    hyper = {k: v.clone().requires_grad_(True) for k, v in HYPER.items()}
    cut = 0 if truncate is None else K - truncate
    theta = {k: v.clone().requires_grad_(True) for k, v in THETA0.items()}
    buf: Params = {}
    total = torch.zeros(())
    for t, b in enumerate(BATCHES):
        h = hyper if t >= cut else {k: v.detach() for k, v in hyper.items()}
        if t == cut:  # the tracked part starts from constants
            theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
            buf = {k: v.detach() for k, v in buf.items()}
        total = total + weights[t] * outer_loss(theta, h, b)
        graph = not first_order and t >= cut
        g = torch.autograd.grad(inner_loss(theta, h, b), list(theta.values()), create_graph=graph)
        g = dict(zip(theta, g, strict=True))
        if not graph:
            g = {k: v.detach() for k, v in g.items()}
        buf = {k: g[k] if k not in buf else MU * buf[k] + g[k] for k in theta}
        theta = {k: theta[k] - h["log_lr"].exp() * buf[k] for k in theta}
    if weights[K]:
        total = total + weights[K] * outer_loss(theta, hyper, OUTER)
    grads = torch.autograd.grad(total, list(hyper.values()))
    final = {k: v.detach() for k, v in theta.items()}
    return dict(zip(hyper, grads, strict=True)), float(total.detach()), final, buf["w"].detach()


def check(result: Hypergrad, expected: tuple[Params, float, Params, Tensor]) -> None:
    grads, value, final, momentum = expected
    for k in grads:
        torch.testing.assert_close(result.grads[k], grads[k], rtol=1e-10, atol=1e-12)
    assert result.outer_loss == pytest.approx(value, rel=1e-12)
    assert result.params is not None
    for k in final:
        torch.testing.assert_close(result.params[k], final[k], rtol=1e-12, atol=1e-14)
    assert result.optimizer_state["step"] == K
    torch.testing.assert_close(result.optimizer_state["momentum"]["w"], momentum)
    assert not result.optimizer_state["momentum"]["w"].requires_grad


UNIFORM = [1.0] * (K + 1)
INCREASING = [(t + 1) / K for t in range(K)] + [0.0]  # the learned optimizer's: no w_K


@pytest.mark.parametrize("method", ["unrolled", "first_order"])
@pytest.mark.parametrize("weights", [UNIFORM, INCREASING], ids=["uniform", "increasing"])
def test_trajectory_objective_matches_the_autograd_reference(
    method: str, weights: list[float]
) -> None:
    outer = OUTER if weights[K] else None  # w_K = 0: outer_batch is never read
    result = hypergrad(
        problem(), method, inner_batches=BATCHES, outer_batch=outer, trajectory_weights=weights
    )
    check(result, reference(weights, first_order=method == "first_order"))
    assert result.diagnostics["objective"] == "trajectory"
    if method == "unrolled":  # the ridge term acts only through the gradient: 0 in first order
        first = hypergrad(
            problem(),
            "first_order",
            inner_batches=BATCHES,
            outer_batch=outer,
            trajectory_weights=weights,
        )
        assert abs(float(first.grads["reg"] - result.grads["reg"])) > 1e-3
        assert float(first.grads["reg"]) == pytest.approx(
            float(reference(weights, first_order=True)[0]["reg"]), rel=1e-10
        )


def test_truncated_trajectory_counts_the_untracked_terms_in_the_value_only() -> None:
    result = hypergrad(
        problem(),
        "unrolled",
        inner_batches=BATCHES,
        outer_batch=OUTER,
        truncate=2,
        trajectory_weights=UNIFORM,
    )
    check(result, reference(UNIFORM, first_order=False, truncate=2))
    assert result.diagnostics["tracked_steps"] == 2


def test_last_iterate_only_is_the_plain_objective_bit_for_bit() -> None:
    for method in ("unrolled", "first_order"):
        plain = hypergrad(problem(), method, inner_batches=BATCHES, outer_batch=OUTER)
        last = hypergrad(
            problem(),
            method,
            inner_batches=BATCHES,
            outer_batch=OUTER,
            trajectory_weights=[0.0] * K + [1.0],
        )
        assert plain.outer_loss == last.outer_loss
        for k in HYPER:
            torch.testing.assert_close(plain.grads[k], last.grads[k], rtol=0, atol=0)


def test_final_params_and_state_carry_over_to_the_next_truncation() -> None:
    """Two calls of 2 steps, the second from the first's params and optimizer state, end
    where one 4-step call ends, and their values add up to its (uniform weights, w_K = 0)."""
    whole = hypergrad(
        problem(),
        "first_order",
        inner_batches=BATCHES,
        outer_batch=None,
        trajectory_weights=[1.0] * K + [0.0],
    )
    first = hypergrad(
        problem(),
        "first_order",
        inner_batches=BATCHES[:2],
        outer_batch=None,
        trajectory_weights=[1.0, 1.0, 0.0],
    )
    assert first.params is not None
    carried = problem()
    carried.params, carried.optimizer_state = first.params, first.optimizer_state
    second = hypergrad(
        carried,
        "first_order",
        inner_batches=BATCHES[2:],
        outer_batch=None,
        trajectory_weights=[1.0, 1.0, 0.0],
    )
    assert whole.params is not None and second.params is not None
    for k in THETA0:
        torch.testing.assert_close(second.params[k], whole.params[k])
    torch.testing.assert_close(
        second.optimizer_state["momentum"]["w"], whole.optimizer_state["momentum"]["w"]
    )
    assert second.outer_loss + first.outer_loss == pytest.approx(whole.outer_loss, rel=1e-12)


@pytest.mark.parametrize("method", ["lookahead", "forward", "implicit", "finite_difference"])
def test_methods_without_a_trajectory_refuse_the_weights(method: str) -> None:
    with pytest.raises(
        SlemError,
        match=rf"^method '{method}' has no trajectory objective: trajectory_weights \(the outer "
        r"loss summed over the unrolled iterates\) needs unrolled or first_order$",
    ):
        hypergrad(
            problem(),
            method,
            inner_batch=BATCHES[0],
            outer_batch=OUTER,
            trajectory_weights=[1.0, 1.0],
        )
    # None is "not given" for every method
    hypergrad(problem(), method, inner_batch=BATCHES[0], outer_batch=OUTER, trajectory_weights=None)


def test_weight_errors_are_one_line() -> None:
    def run(weights: object) -> None:
        hypergrad(
            problem(),
            "first_order",
            inner_batches=BATCHES,
            outer_batch=OUTER,
            trajectory_weights=weights,
        )

    with pytest.raises(
        SlemError, match=r"needs 5 weights \(theta_0\.\.theta_4 of 4 inner steps\), got 4"
    ):
        run([1.0] * K)
    with pytest.raises(SlemError, match="are all 0: the objective would be constant"):
        run([0.0] * (K + 1))
    with pytest.raises(SlemError, match="must be finite"):
        run([1.0] * K + [math.nan])
    with pytest.raises(SlemError, match="must be a sequence of numbers"):
        run(["a"] * (K + 1))
