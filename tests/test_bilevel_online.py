"""ForwardTangents: the online forward-mode, first-order hypergradient equals the engine's
reverse-mode ``first_order`` over the same window of steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slem.bilevel import SGD, Adam, BilevelProblem, ForwardTangents, functional, hypergrad
from slem.errors import SlemError


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    f = functional(model)
    batches = [
        (torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(6)
    ]
    outer = (torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,)))

    def loss(params, hyper, batch):
        return F.cross_entropy(f(params, batch[0]), batch[1])

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    hyper = {
        "log_lr": torch.tensor(-1.5, dtype=torch.float64),
        "log_wd": torch.tensor(-4.0, dtype=torch.float64),
    }
    return loss, params, hyper, batches, outer


NAMES = ("0.weight", "0.bias", "2.weight", "2.bias")
OPTIMIZERS = {
    "sgd_momentum": lambda: SGD(
        lr=lambda h: h["log_lr"].exp(), momentum=0.9, weight_decay=lambda h: h["log_wd"].exp()
    ),
    "sgd_nesterov": lambda: SGD(
        lr=lambda h: h["log_lr"].exp(),
        momentum=0.5,
        nesterov=True,
        weight_decay=lambda h: h["log_wd"].exp(),
    ),
    # a rate per parameter (Meta-SGD's form): not elementwise over the flat vector
    "sgd_rate_per_parameter": lambda: SGD(
        lr=lambda h: {k: h["log_lr"].exp() * (1 + i) for i, k in enumerate(NAMES)},
        momentum=0.9,
        weight_decay=lambda h: h["log_wd"].exp(),
    ),
    "adam": lambda: Adam(
        lr=lambda h: 0.1 * h["log_lr"].exp(), weight_decay=lambda h: h["log_wd"].exp()
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_forward_tangents_match_reverse_first_order(name: str) -> None:
    loss, params, hyper, batches, outer = _setup()
    opt = OPTIMIZERS[name]()
    reference = hypergrad(
        BilevelProblem(params, hyper, loss, loss, opt),
        "first_order",
        inner_batches=batches,
        outer_batch=outer,
    )
    tangents = ForwardTangents(hyper)
    theta, state = dict(params), opt.init(params)
    for batch in batches:
        g = torch.func.grad(loss)(theta, hyper, batch)
        tangents.step(opt, theta, g, state, hyper)
        theta, state = opt.update(theta, g, state, hyper)
    result = tangents.hypergrad(loss, theta, hyper, outer)
    assert tangents.steps == len(batches)
    for k in hyper:
        torch.testing.assert_close(result.grads[k], reference.grads[k], rtol=1e-9, atol=1e-12)
    assert result.outer_loss == pytest.approx(reference.outer_loss)


def test_one_step_is_exact_and_reset_truncates() -> None:
    """One step from a fresh tangent is the exact lookahead hypergradient of the rate; after
    reset, earlier steps no longer count."""
    loss, params, hyper, batches, outer = _setup(1)
    opt = OPTIMIZERS["sgd_momentum"]()
    exact = hypergrad(
        BilevelProblem(params, hyper, loss, loss, opt),
        "unrolled",
        inner_batch=batches[0],
        outer_batch=outer,
    )
    tangents = ForwardTangents(hyper)
    g = torch.func.grad(loss)(params, hyper, batches[0])
    tangents.step(opt, params, g, opt.init(params), hyper)
    theta, _ = opt.update(params, g, opt.init(params), hyper)
    one = tangents.hypergrad(loss, theta, hyper, outer)
    for k in hyper:  # the rate's hypergradient needs no second derivative for one step
        torch.testing.assert_close(one.grads[k], exact.grads[k], rtol=1e-9, atol=1e-12)
    tangents.reset()
    none = tangents.hypergrad(loss, theta, hyper, outer)
    assert all(float(v.abs()) == 0.0 for v in none.grads.values())


def test_too_many_directions_is_one_line() -> None:
    with pytest.raises(SlemError, match="one tangent per hyperparameter") as err:
        ForwardTangents({"w": torch.zeros(100)})
    assert "\n" not in str(err.value)


def test_decay_scales_the_tangents_and_checks_its_factor() -> None:
    """decay(1) keeps the whole horizon, decay(0.5) halves what was carried, decay(0) resets."""
    loss, params, hyper, batches, outer = _setup(2)
    opt = OPTIMIZERS["sgd_momentum"]()
    tangents = ForwardTangents(hyper)
    theta, state = dict(params), opt.init(params)
    for batch in batches[:3]:
        g = torch.func.grad(loss)(theta, hyper, batch)
        tangents.step(opt, theta, g, state, hyper)
        theta, state = opt.update(theta, g, state, hyper)
    full = tangents.hypergrad(loss, theta, hyper, outer)
    direct = tangents.hypergrad(loss, theta, hyper, outer)
    tangents.decay(1.0)
    kept = tangents.hypergrad(loss, theta, hyper, outer)
    tangents.decay(0.5)
    half = tangents.hypergrad(loss, theta, hyper, outer)
    tangents.reset()
    zero = tangents.hypergrad(loss, theta, hyper, outer)
    for k in hyper:
        torch.testing.assert_close(kept.grads[k], full.grads[k])
        through = full.grads[k] - zero.grads[k]  # the part carried by the tangents
        torch.testing.assert_close(half.grads[k], zero.grads[k] + 0.5 * through)
        torch.testing.assert_close(direct.grads[k], full.grads[k])
    with pytest.raises(SlemError, match=r"factor in \[0, 1\]"):
        tangents.decay(1.5)
