"""The meta step sees the same model as the real step (issue 14, kind 1).

Stochastic layers: every forward pass of one hypergradient (and the real step's forward) draws
the same randomness, so the fast path equals the generic path with dropout on, for every
method. Frozen parameters: never moved, never differentiated; BatchNorm statistics move once
per real step under every meta-step option.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slem.bilevel import (
    SGD,
    BilevelProblem,
    WeightedProblem,
    functional,
    hypergrad,
    same_randomness,
)
from slem.data import LoadOptions, load_dataset, make_task
from slem.train import Callback, make_trainer, parse_train_config


class NoisyGate(nn.Module):
    """A user's own stochastic layer: multiplies by fresh uniform noise in train mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (0.5 + torch.rand_like(x))


def stochastic_model(layer: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), layer, nn.Linear(32, 3)).double().train()


def weighted_problem(model: nn.Module) -> tuple[WeightedProblem, tuple, tuple]:
    net = functional(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 10, dtype=torch.double, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    xo = torch.randn(24, 10, dtype=torch.double, generator=g)
    yo = torch.randint(0, 3, (24,), generator=g)
    torch.manual_seed(2)
    w = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    fw = functional(w)
    problem = WeightedProblem(
        dict(model.named_parameters()),
        dict(w.named_parameters()),
        lambda p, b: F.cross_entropy(net(p, b[0]), b[1], reduction="none"),
        lambda h, losses, b: torch.sigmoid(fw(h, losses[:, None])).squeeze(1),
        lambda p, h, b: F.cross_entropy(net(p, b[0]), b[1]),
        SGD(lr=0.3, momentum=0.9),
    )
    return problem, (x, y), (xo, yo)


def flat(result) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.cat([g.reshape(-1) for g in result.grads.values()])


LAYERS = {
    "dropout": lambda: nn.Dropout(0.5),
    "alpha_dropout": lambda: nn.AlphaDropout(0.3),
    "user_layer": NoisyGate,
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_fast_path_equals_generic_with_stochastic_layers(layer: str) -> None:
    problem, batch, outer = weighted_problem(stochastic_model(LAYERS[layer]()))
    results = {}
    for name, options in {
        "generic": {"fast": False},
        "forward": {"jvp_mode": "forward"},
        "difference": {"jvp_mode": "difference"},
    }.items():
        torch.manual_seed(123)
        results[name] = flat(
            hypergrad(problem, "lookahead", inner_batch=batch, outer_batch=outer, **options)
        )
    ref = results["generic"]
    assert ref.norm() > 0
    for name in ("forward", "difference"):
        err = float((results[name] - ref).norm() / ref.norm())
        assert err < 1e-6, (name, err)
    # the same seed gives the same hypergradient; another seed another draw
    torch.manual_seed(123)
    again = flat(hypergrad(problem, "lookahead", inner_batch=batch, outer_batch=outer, fast=False))
    torch.manual_seed(124)
    other = flat(hypergrad(problem, "lookahead", inner_batch=batch, outer_batch=outer, fast=False))
    assert torch.equal(again, ref)
    assert not torch.allclose(other, ref)


def test_every_method_is_deterministic_under_dropout() -> None:
    """Within one hypergradient all forwards share a draw: the unrolled K=1 gradient equals
    lookahead's, and implicit / forward / finite differences are reproducible for a seed."""
    problem, batch, outer = weighted_problem(stochastic_model(nn.Dropout(0.5)))
    torch.manual_seed(7)
    look = flat(hypergrad(problem, "lookahead", inner_batch=batch, outer_batch=outer))
    torch.manual_seed(7)
    unrolled = flat(hypergrad(problem, "unrolled", inner_batch=batch, outer_batch=outer, steps=1))
    assert float((unrolled - look).norm() / look.norm()) < 1e-10
    torch.manual_seed(7)
    fwd = flat(hypergrad(problem, "forward", inner_batch=batch, outer_batch=outer, steps=1))
    assert float((fwd - look).norm() / look.norm()) < 1e-10
    for method, options in (
        ("implicit", {"solver": "neumann", "alpha": 0.1}),
        ("finite_difference", {}),
    ):
        torch.manual_seed(7)
        a = flat(hypergrad(problem, method, inner_batch=batch, outer_batch=outer, **options))
        torch.manual_seed(7)
        b = flat(hypergrad(problem, method, inner_batch=batch, outer_batch=outer, **options))
        assert torch.equal(a, b), method


def test_same_randomness_replays_one_draw() -> None:
    with same_randomness():
        model = functional(nn.Dropout(0.5))
        x = torch.ones(1000)
        a, b = model({}, x), model({}, x)
    assert torch.equal(a, b)
    c = nn.Dropout(0.5)(x)  # outside: fresh draws again
    assert not torch.equal(a, c)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])
def test_difference_step_is_accurate_in_float64(act: type[nn.Module]) -> None:
    """The documented error of jvp_mode difference at its default step (1e-6 in float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), act(), nn.Linear(64, 3)).double()
    problem, batch, outer = weighted_problem(model)
    exact = flat(hypergrad(problem, "lookahead", inner_batch=batch, outer_batch=outer))
    diff = flat(
        hypergrad(problem, "lookahead", inner_batch=batch, outer_batch=outer, jvp_mode="difference")
    )
    assert float((diff - exact).norm() / exact.norm()) < 1e-7


# ------------------------------------------------------------------ frozen parameters


def frozen_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    "method", ["lookahead", "unrolled", "forward", "implicit", "finite_difference"]
)
def test_frozen_parameters_are_not_inner_parameters(method: str) -> None:
    model = frozen_model()
    with_frozen, batch, outer = weighted_problem(model)
    trainable_only = WeightedProblem(
        {n: p for n, p in model.named_parameters() if p.requires_grad},
        with_frozen.hyper,
        with_frozen.per_sample_loss,
        with_frozen.weights,
        with_frozen.outer_loss,
        with_frozen.optimizer,
    )
    assert set(with_frozen.params) == {"2.weight", "2.bias"}
    options = {"solver": "neumann", "alpha": 0.1} if method == "implicit" else {}
    a = flat(hypergrad(with_frozen, method, inner_batch=batch, outer_batch=outer, **options))
    b = flat(hypergrad(trainable_only, method, inner_batch=batch, outer_batch=outer, **options))
    assert torch.equal(a, b)
    assert a.norm() > 0


def test_from_module_and_dicts_agree_on_frozen() -> None:
    model = frozen_model()
    fm = functional(model)

    def loss(p, h, b):  # type: ignore[no-untyped-def]
        return F.cross_entropy(fm(p, b[0]), b[1]) * h["s"]

    hyper = {"s": torch.ones((), dtype=torch.double)}
    a = BilevelProblem.from_module(model, hyper, loss, loss, SGD(lr=0.1))
    b = BilevelProblem(dict(model.named_parameters()), hyper, loss, loss, SGD(lr=0.1))
    assert list(a.params) == list(b.params) == ["2.weight", "2.bias"]


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    data = load_dataset("mnist1d", LoadOptions(size=700))
    return make_task(data, noise="symmetric:0.4", meta_per_class=5, seed=0)


def bn_model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(40, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(16, 10),
    )
    for p in model[1].parameters():
        p.requires_grad_(False)
    return model


META_OPTIONS = [
    {"hypergrad": "lookahead"},
    {"hypergrad": "lookahead", "order": "lagged"},
    {"hypergrad": "lookahead", "jvp_mode": "difference"},
    {"hypergrad": "lookahead", "virtual_step": "sgd"},
    {"hypergrad": "unrolled"},
    {"hypergrad": "implicit"},
    {"hypergrad": "finite_difference"},
]


def config(meta: dict, **extra: object):  # type: ignore[no-untyped-def]
    values = {
        "method": "mwnet",
        "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 5},
        "optim": {"epochs": 1, "batch_size": 64},
        "meta": {"warmup_epochs": 0, "hidden": 8, **meta},
        **extra,
    }
    return parse_train_config(values)


@pytest.mark.parametrize("meta", META_OPTIONS, ids=lambda m: "-".join(m.values()))
def test_trainer_keeps_frozen_weights_and_moves_batchnorm_once(task, meta: dict) -> None:  # type: ignore[no-untyped-def]
    model = bn_model()
    frozen = model[1].weight.detach().clone()
    trainer = make_trainer(config(meta), task, model=model)
    trainer.fit()
    assert torch.equal(model[1].weight, frozen)
    assert int(model[2].num_batches_tracked) == trainer.progress.global_step > 0


class Probe(Callback):
    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    def on_hypergradient(self, trainer, result) -> None:  # type: ignore[no-untyped-def]
        self.grads.append(torch.cat([g.reshape(-1).clone() for g in result.grads.values()]))


def test_trainer_fast_and_generic_agree_with_dropout(task) -> None:  # type: ignore[no-untyped-def]
    """The real step draws the meta step's dropout masks: training with the fast path and
    with the generic unrolled (K=1) hypergradient gives the same model."""
    params = {}
    probes = {}
    for hg in ("lookahead", "unrolled"):
        model = bn_model(dropout=0.3)
        probes[hg] = Probe()
        cfg = config({"hypergrad": hg}, seed=3)
        make_trainer(cfg, task, model=model, callbacks=[probes[hg]]).fit()
        params[hg] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert len(probes["lookahead"].grads) == len(probes["unrolled"].grads) > 3
    for a, b in zip(probes["lookahead"].grads, probes["unrolled"].grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-7)
    assert torch.allclose(params["lookahead"], params["unrolled"], rtol=1e-4, atol=1e-6)


def test_meta_step_time_ratio_without_warmup(task) -> None:  # type: ignore[no-untyped-def]
    trainer = make_trainer(config({}), task, model=bn_model())
    result = trainer.fit()
    assert trainer.progress.timings["plain"] == []
    ratio = result.summary["meta_step_time_ratio"]
    assert ratio is not None and ratio > 0
    assert trainer.progress.timings["plain"] == []  # timing the probe changed nothing of the run


def test_virtual_step_option_reaches_the_meta_step(task) -> None:  # type: ignore[no-untyped-def]
    """``meta.virtual_step: sgd`` (the official code's plain step) gives another hypergradient
    than the optimizer's step (momentum and weight decay) once momentum has built up."""
    grads = {}
    for mode in ("optimizer", "sgd"):
        probe = Probe()
        cfg = config({"virtual_step": mode}, optim={"epochs": 1, "batch_size": 64})
        make_trainer(cfg, task, model=bn_model(), callbacks=[probe]).fit()
        grads[mode] = probe.grads
    # step 1 has no momentum yet: only weight decay (5e-4) separates them
    assert torch.allclose(grads["optimizer"][0], grads["sgd"][0], rtol=1e-3, atol=1e-9)
    later = [
        float((a - b).norm() / a.norm())
        for a, b in zip(grads["optimizer"][1:], grads["sgd"][1:], strict=True)
    ]
    assert max(later) > 1e-3
