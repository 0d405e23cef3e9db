"""The learning-rate problem type: its structured lookahead equals the generic one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slem.bilevel import SGD, Adam, RateProblem, hypergrad, lookahead


def _problem(optimizer_cls: type, **options: float) -> tuple[RateProblem, tuple, tuple]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (32,))
    mx, my = torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (20,))
    params = {"w": torch.randn(5, 3, generator=gen, dtype=torch.float64), "b": torch.zeros(3)}
    params["b"] = params["b"].double()
    hyper = {"a": torch.tensor([0.3], dtype=torch.float64), "u": torch.tensor([0.7]).double()}

    def loss(p: dict, h: dict, batch: tuple) -> torch.Tensor:
        return F.cross_entropy(torch.tanh(batch[0] @ p["w"]) * 3 + p["b"], batch[1])

    def rate(h: dict) -> torch.Tensor:  # reads "a" only: "u" gets no gradient
        return torch.nn.functional.softplus(h["a"]).squeeze()

    opt = optimizer_cls(lr=rate, **options)
    return RateProblem(params, hyper, loss, loss, opt), (x, y), (mx, my)


@pytest.mark.parametrize(
    ("optimizer_cls", "options"),
    [(SGD, {}), (SGD, {"momentum": 0.9, "weight_decay": 1e-3, "nesterov": True}), (Adam, {})],
)
def test_rate_lookahead_equals_the_generic_lookahead(optimizer_cls: type, options: dict) -> None:
    problem, inner, outer = _problem(optimizer_cls, **options)
    fast = hypergrad(problem, "lookahead", inner_batch=inner, outer_batch=outer)
    generic = lookahead(problem, outer, inner_batch=inner, fast=False)
    assert fast.diagnostics["path"] == "rate" and generic.diagnostics["path"] == "generic"
    assert set(fast.grads) == {"a"}  # the rate does not read "u"
    torch.testing.assert_close(fast.grads["a"], generic.grads["a"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(generic.grads["u"], torch.zeros(1, dtype=torch.float64))
    assert fast.outer_loss == pytest.approx(generic.outer_loss, rel=1e-12)


def test_rate_lookahead_reuses_given_inner_gradients_and_matches_first_order() -> None:
    """With the real step's gradient passed in, nothing is recomputed; first_order (the
    inner gradient held constant) is exact for a rate and agrees."""
    problem, inner, outer = _problem(SGD, momentum=0.5)
    live = {k: v.clone().requires_grad_(True) for k, v in problem.params.items()}
    g = torch.autograd.grad(problem.inner_loss(live, problem.hyper, inner), list(live.values()))
    problem.grads = dict(zip(live, g, strict=True))
    given = hypergrad(problem, "lookahead", inner_batch=inner, outer_batch=outer)
    first = hypergrad(problem, "first_order", inner_batch=inner, outer_batch=outer)
    torch.testing.assert_close(given.grads["a"], first.grads["a"], rtol=1e-10, atol=1e-12)
    eps = 1e-6
    up = dict(problem.hyper, a=problem.hyper["a"] + eps)
    down = dict(problem.hyper, a=problem.hyper["a"] - eps)

    def looked_ahead(h: dict) -> float:
        stepped, _ = problem.optimizer.update(
            problem.params, problem.grads, problem.optimizer.init(problem.params), h
        )
        return float(problem.outer_loss(stepped, h, outer))

    fd = (looked_ahead(up) - looked_ahead(down)) / (2 * eps)
    assert float(given.grads["a"]) == pytest.approx(fd, rel=1e-6)
