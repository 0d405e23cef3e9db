"""The per-sample-weight fast path equals generic lookahead; no memory growth over 1,000 calls."""

from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slem.bilevel import SGD, Adam, Params, WeightedProblem, functional, hypergrad

pytestmark = pytest.mark.usefixtures("float64")
F64 = torch.float64


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 5, padding=2),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(4 * 10, 5),
    ).double()


def weight_net() -> nn.Module:
    """MW-Net's weighting net: loss -> weight, 1-100-1 with a sigmoid."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1), nn.Sigmoid()).double()


def batch(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 20, generator=g, dtype=F64), torch.randint(0, 5, (n,), generator=g)


TRAIN, META = batch(32, 1), batch(16, 2)


def weighted_problem(
    model: nn.Module, wnet: nn.Module, optimizer: object, extra: bool = False, state: object = None
) -> WeightedProblem:
    net, vnet = functional(model), functional(wnet)

    def per_sample(params: Params, b: tuple[Tensor, Tensor]) -> Tensor:
        return F.cross_entropy(net(params, b[0]), b[1], reduction="none")

    def weights(hyper: Params, losses: Tensor, b: object) -> Tensor:
        return vnet(hyper, losses[:, None]).squeeze(1)

    def outer(params: Params, hyper: Params, b: tuple[Tensor, Tensor]) -> Tensor:
        loss = F.cross_entropy(net(params, b[0]), b[1])
        if extra:  # a hyperparameter the outer loss sees directly
            loss = loss + 1e-2 * (hyper["0.weight"] ** 2).sum()
        return loss

    hyper: Params = dict(wnet.named_parameters())
    if extra:
        hyper = {**hyper, "log_lr": torch.tensor(-2.0, dtype=F64)}
    return WeightedProblem(
        dict(model.named_parameters()),
        hyper,
        per_sample,
        weights,
        outer,
        optimizer,
        optimizer_state=state,
    )


def rel(a: Params, b: Params) -> float:
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in b)
    den = sum(float((b[k] ** 2).sum()) for k in b)
    return (num / den) ** 0.5


def adam_state(model: nn.Module) -> dict[str, object]:
    """Adam moments after two real steps (a fresh Adam's first step is sign(g))."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for seed in (5, 6):
        opt.zero_grad()
        F.cross_entropy(model(batch(32, seed)[0]), batch(32, seed)[1]).backward()
        opt.step()
    return Adam(lr=1e-3).state_from_torch(opt, dict(model.named_parameters()))


@pytest.mark.parametrize("opt", ["sgd", "adam", "hyper-lr"])
def test_fast_path_equals_generic_lookahead(opt: str) -> None:
    model, wnet = cnn(), weight_net()
    state = None
    if opt == "sgd":
        optimizer: object = SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)
    elif opt == "adam":
        optimizer, state = Adam(lr=1e-3), adam_state(model)
    else:
        optimizer = SGD(lr=lambda h: h["log_lr"].exp(), momentum=0.9)
    problem = weighted_problem(model, wnet, optimizer, extra=opt == "hyper-lr", state=state)
    fast = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META)
    generic = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META, fast=False)
    assert fast.diagnostics["path"] == "fast" and generic.diagnostics["path"] == "generic"
    assert rel(fast.grads, generic.grads) < 1e-6
    assert fast.outer_loss == pytest.approx(generic.outer_loss, rel=1e-10)
    assert float(torch.cat([g.reshape(-1) for g in generic.grads.values()]).norm()) > 1e-6


def test_central_difference_variant_is_close() -> None:
    problem = weighted_problem(cnn(), weight_net(), SGD(lr=0.1, momentum=0.9))
    exact = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META)
    errors = [
        rel(
            hypergrad(
                problem,
                "lookahead",
                inner_batch=TRAIN,
                outer_batch=META,
                jvp_mode="difference",
                epsilon=eps,
            ).grads,
            exact.grads,
        )
        for eps in (1e-2, 1e-5)
    ]
    assert errors[0] < 1e-2 and errors[1] < 1e-6, errors  # O(eps^2) but for ReLU/pool kinks


def test_keep_graph_lets_the_real_step_reuse_the_forward() -> None:
    model, wnet = cnn(), weight_net()
    problem = weighted_problem(model, wnet, SGD(lr=0.1))
    result = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META, keep_graph=True)
    losses = result.diagnostics["losses"].weighted
    new_w = torch.rand(len(losses))
    reused = torch.autograd.grad((new_w * losses).mean(), list(model.parameters()))
    fresh_losses = F.cross_entropy(
        functional(model)(dict(model.named_parameters()), TRAIN[0]), TRAIN[1], reduction="none"
    )
    fresh = torch.autograd.grad((new_w * fresh_losses).mean(), list(model.parameters()))
    for a, b in zip(reused, fresh, strict=True):
        torch.testing.assert_close(a, b)


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), Tensor))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc for RSS")
@pytest.mark.parametrize("fast", [True, False])
def test_no_memory_growth_over_1000_calls(fast: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).float()
    wnet = weight_net().float()
    x, y = torch.randn(32, 8, dtype=torch.float32), torch.randint(0, 3, (32,))
    net, vnet = functional(model), functional(wnet)
    problem = WeightedProblem(
        dict(model.named_parameters()),
        dict(wnet.named_parameters()),
        lambda p, b: F.cross_entropy(net(p, b[0]), b[1], reduction="none"),
        lambda h, losses, b: vnet(h, losses[:, None]).squeeze(1),
        lambda p, h, b: F.cross_entropy(net(p, b[0]), b[1]),
        SGD(lr=0.1, momentum=0.9),
    )
    samples = {}
    for call in range(1, 1001):
        hypergrad(problem, "lookahead", inner_batch=(x, y), outer_batch=(x, y), fast=fast)
        if call in (100, 1000):
            samples[call] = (_rss_mb(), _live_tensors())
    (rss_100, tensors_100), (rss_1000, tensors_1000) = samples[100], samples[1000]
    assert tensors_1000 <= tensors_100, (tensors_100, tensors_1000)
    assert rss_1000 - rss_100 < 20.0, (rss_100, rss_1000)


def test_fast_path_with_unweighted_term_and_features() -> None:
    """CMW-Net-SL's loss w * (l_y - l_z) + l_z with the net fed l_y: fast equals generic."""
    from slem.bilevel import PerSample

    model, wnet = cnn(), weight_net()
    net, vnet = functional(model), functional(wnet)
    pseudo = torch.softmax(
        torch.randn(32, 5, generator=torch.Generator().manual_seed(3), dtype=F64), dim=1
    )

    def per_sample(params: Params, b: tuple[Tensor, Tensor]) -> PerSample:
        logits = net(params, b[0])
        given = F.cross_entropy(logits, b[1], reduction="none")
        soft = -(pseudo * F.log_softmax(logits, dim=1)).sum(1)
        return PerSample(weighted=given - soft, unweighted=soft, features=given)

    def weights(hyper: Params, losses: Tensor, b: object) -> Tensor:
        return vnet(hyper, losses[:, None]).squeeze(1)

    problem = WeightedProblem(
        dict(model.named_parameters()),
        dict(wnet.named_parameters()),
        per_sample,
        weights,
        lambda p, h, b: F.cross_entropy(net(p, b[0]), b[1]),
        SGD(lr=0.1, momentum=0.9),
    )
    fast = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META)
    generic = hypergrad(problem, "lookahead", inner_batch=TRAIN, outer_batch=META, fast=False)
    assert rel(fast.grads, generic.grads) < 1e-6
