"""DARTS on the bilevel engine (:mod:`slem.train.nas`): the two hypergradients it uses (first
order at the current weights; the finite-difference second order against the exact lookahead),
the search's history and safeguard, exact resume, config errors, and a search that learns."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor

from slem.automl.nas_run import parse_nas_config
from slem.bilevel import SGD, BilevelProblem, functional, hypergrad
from slem.errors import SlemError
from slem.methodology.architecture import CellNetwork, CellSpace
from slem.train.callbacks import Callback, CheckpointCallback
from slem.train.guard import TrainingStopped
from slem.train.nas import DartsConfig, DartsSearch, NetworkConfig, darts_summary

TINY = NetworkConfig(channels=4, cells=1, stages=1)


def gap_task(n: int, seed: int, length: int = 16, gap: int = 3) -> tuple[Tensor, Tensor]:
    """Signals ``(n, 1, length)`` of small noise with two unit spikes of random signs ``gap``
    apart at a random place; the label says whether the signs agree. The stem's 3-wide
    convolution sees one spike at a time, and pooling only sums what it sees (a linear
    filter of the stem's output cannot have taps at ``t`` and ``t + 3`` alone), so the cell
    needs a convolution on the path to relate the two."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, 1, length, generator=g)
    s1 = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    s2 = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    t = torch.randint(0, length - gap, (n,), generator=g)
    rows = torch.arange(n)
    x[rows, 0, t] += s1.to(x.dtype)
    x[rows, 0, t + gap] += s2.to(x.dtype)
    return x, (s1 == s2).long()


def tiny_data(seed: int = 0, n: int = 64) -> list[tuple[Tensor, Tensor]]:
    return [gap_task(n, 10 + seed), gap_task(n, 20 + seed), gap_task(n // 2, 30 + seed)]


def search(callbacks: tuple[Callback, ...] = (), seed: int = 0, **darts: Any) -> DartsSearch:
    cfg = DartsConfig(**{"epochs": 3, "batch_size": 16, **darts})
    return DartsSearch(
        cfg, CellSpace(), TINY, tiny_data(), 2, seed=seed, device="cpu", callbacks=callbacks
    )


# ------------------------------------------------------------------ the hypergradients


def quadratic_problem() -> tuple[BilevelProblem, Tensor, Tensor]:
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    phi = torch.tensor([0.3, 0.1, -0.4], dtype=torch.float64)

    def inner(params: dict[str, Tensor], hyper: dict[str, Tensor], batch: Any) -> Tensor:
        return ((params["theta"] - 3.0 * hyper["phi"]) ** 2).sum()

    def outer(params: dict[str, Tensor], hyper: dict[str, Tensor], batch: Any) -> Tensor:
        return 0.5 * ((params["theta"] - hyper["phi"]) ** 2).sum() + (batch * hyper["phi"]).sum()

    problem = BilevelProblem({"theta": theta}, {"phi": phi}, inner, outer, SGD(lr=0.1))
    return problem, theta, phi


def test_first_order_with_no_step_is_the_outer_gradient_at_the_current_parameters() -> None:
    problem, theta, phi = quadratic_problem()
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    result = hypergrad(problem, "first_order", inner_batch=None, outer_batch=c, steps=0)
    # d/dphi [0.5 |theta - phi|^2 + c.phi] = phi - theta + c, with theta unmoved
    torch.testing.assert_close(result.grads["phi"], phi - theta + c)
    assert result.params is not None
    torch.testing.assert_close(result.params["theta"], theta)
    assert result.diagnostics["steps"] == 0
    assert result.outer_loss == pytest.approx(float(0.5 * ((theta - phi) ** 2).sum() + c @ phi))
    # one step moves theta (theta - 0.1 * 2 (theta - 3 phi)) and the first-order gradient
    # holds it fixed: phi - theta_1 + c
    one = hypergrad(problem, "first_order", inner_batch=None, outer_batch=c, steps=1)
    theta_1 = theta - 0.2 * (theta - 3.0 * phi)
    torch.testing.assert_close(one.grads["phi"], phi - theta_1 + c)
    with pytest.raises(SlemError, match="steps must be at least 1"):
        hypergrad(problem, "unrolled", inner_batch=None, outer_batch=c, steps=0)
    with pytest.raises(SlemError, match="steps must be at least 0"):
        hypergrad(problem, "first_order", inner_batch=None, outer_batch=c, steps=-1)


def supernet_problem(
    seed: int = 0,
) -> tuple[CellNetwork, Tensor, Any, Any, Any]:
    torch.manual_seed(seed)
    net = CellNetwork(1, 2, space=CellSpace(), channels=4, stages=1).double()
    alpha = (0.3 * torch.randn(3, 5)).double()
    f = functional(net)

    def loss(params: dict[str, Tensor], hyper: dict[str, Tensor], batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(f(params, x, torch.softmax(hyper["alpha"], -1), 0.3), y)

    (xi, yi), (xo, yo) = gap_task(24, 1), gap_task(24, 2)
    return net, alpha, loss, (xi.double(), yi), (xo.double(), yo)


def test_first_order_darts_differentiates_the_validation_loss_at_the_current_weights() -> None:
    net, alpha, loss, inner, outer = supernet_problem()
    params = dict(net.named_parameters())
    problem = BilevelProblem(params, {"alpha": alpha}, loss, loss, SGD(lr=0.1, momentum=0.9))
    result = hypergrad(problem, "first_order", inner_batch=inner, outer_batch=outer, steps=0)
    a = alpha.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(
        loss({k: p.detach() for k, p in params.items()}, {"alpha": a}, outer), a
    )
    torch.testing.assert_close(result.grads["alpha"], expected)
    assert float(expected.abs().max()) > 1e-6


def test_finite_difference_agrees_with_the_exact_lookahead_through_darts_own_problem(
    float64: None,
) -> None:
    """The second-order wiring of :class:`DartsSearch` (its MetaStep's virtual step: SGD with
    momentum and weight decay, with the real optimizer's state after a few steps): DARTS'
    finite-difference hypergradient is the exact one-step lookahead gradient, up to the
    central difference's error."""
    data = [(x.double(), y) for x, y in tiny_data()]
    s = DartsSearch(
        DartsConfig(epochs=1, batch_size=16, order="second"),
        CellSpace(),
        TINY,
        data,
        2,
        device="cpu",
    )
    s.fit(progress=False)  # the weights' optimizer now carries momentum buffers
    assert s.outer.method == "finite_difference"
    assert s.supernet.classifier.weight.dtype == torch.float64
    params = dict(s.supernet.named_parameters())
    beta = 0.5
    inner = (s.x_w[:16], s.y_w[:16], beta)
    outer = (s.x_a[:16], s.y_a[:16], beta)
    problem = s.outer.problem(params, s._loss, s._loss)
    assert problem.optimizer_state is not None
    exact = hypergrad(problem, "lookahead", inner_batch=inner, outer_batch=outer)
    approx = hypergrad(problem, "finite_difference", inner_batch=inner, outer_batch=outer)
    first = hypergrad(problem, "first_order", inner_batch=inner, outer_batch=outer, steps=0)
    g, ref, fo = approx.grads["alpha"], exact.grads["alpha"], first.grads["alpha"]
    assert float((g - ref).norm() / ref.norm()) < 1e-4
    assert approx.outer_loss == pytest.approx(exact.outer_loss, rel=1e-10)
    # the second-order term is not negligible here (else the check above would be vacuous)
    assert float((fo - ref).norm() / ref.norm()) > 1e-3


# ------------------------------------------------------------------ the search


def test_history_weights_and_the_decaying_auxiliary_skip() -> None:
    s = search(safeguard="aux_skip")
    s.fit(progress=False)
    per_epoch, total = 4, 12  # 64 samples in batches of 16, 3 epochs
    assert s.plan.per_epoch == per_epoch and s.iteration == total
    assert [r["iteration"] for r in s.history] == list(range(1, total + 1))
    assert all("loss" in r and "arch_loss" in r and "beta" in r for r in s.history)
    betas = [r["beta"] for r in s.history]
    assert betas[0] == 1.0 and betas[-1] == pytest.approx(1 / total, abs=1e-4)
    assert all(a > b for a, b in itertools.pairwise(betas))
    assert betas[6] == pytest.approx(0.5, abs=1e-4)  # linear in the iteration
    epochs = [r for r in s.history if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["iteration"] for r in epochs] == [4, 8, 12]
    assert all(0.0 <= r["val_accuracy"] <= 100.0 for r in epochs)
    weights = s.weight_history()
    assert weights.shape == (3, 3, 5)
    assert abs(weights.sum(axis=2) - 1).max() < 1e-4
    assert epochs[-1]["genotype"] == str(s.mixing.genotype())
    assert (abs(weights[-1] - weights[0]) > 1e-4).any()  # the architecture moved
    summary = darts_summary(s)
    assert summary["genotype"] == str(s.mixing.genotype()) and summary["iterations"] == total
    assert summary["supernet_val_accuracy"] == epochs[-1]["val_accuracy"]
    assert summary["safeguard"] == "aux_skip" and summary["order"] == "second"
    assert "none" not in summary["ops"]

    plain = search(safeguard="none", order="first", epochs=1)
    plain.fit(progress=False)
    assert plain.outer.method == "first_order"
    assert [r["beta"] for r in plain.history] == [0.0] * 4


def test_warmup_epochs_leave_the_architecture_alone() -> None:
    s = search(warmup_epochs=2, epochs=3)
    before = s.mixing.alpha.detach().clone()
    s.fit(progress=False)
    rows = s.history
    assert not any("arch_loss" in r for r in rows[:8]) and all("arch_loss" in r for r in rows[8:])
    weights = s.weight_history()
    assert (abs(weights[1] - weights[0]) < 1e-7).all()
    assert not torch.equal(before, s.mixing.alpha.detach())


@pytest.mark.parametrize("stop_at", [4, 6])  # at an epoch's end, and mid-epoch
def test_resume_gives_the_search_of_an_uninterrupted_run(tmp_path: Path, stop_at: int) -> None:
    full = search()
    full.fit(progress=False)
    ckpt = tmp_path / "search.pt"

    class Stop(Callback):
        def on_step_end(self, trainer: Any, stats: dict[str, float]) -> None:
            if trainer.progress.global_step == stop_at:
                trainer.request_stop("interrupted")

    first = search((CheckpointCallback(ckpt, 100), Stop()))
    with pytest.raises(TrainingStopped):
        first.fit(progress=False)
    second = search()
    second.load_checkpoint(ckpt)
    assert second.iteration == stop_at
    second.fit(progress=False)
    assert torch.equal(second.mixing.alpha, full.mixing.alpha)
    assert [r["loss"] for r in second.history] == [r["loss"] for r in full.history]
    assert second.history[-1]["weights"] == full.history[-1]["weights"]
    for a, b in zip(second.supernet.parameters(), full.supernet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_search_config_errors() -> None:
    with pytest.raises(
        SlemError, match=r"partial_channels \(4\) must divide network.channels \(6\)"
    ):
        DartsSearch(
            DartsConfig(partial_channels=4),
            CellSpace(),
            NetworkConfig(channels=6),
            tiny_data(),
            2,
            device="cpu",
        )
    with pytest.raises(ValidationError, match="warmup_epochs"):
        DartsConfig(epochs=2, warmup_epochs=2)
    with pytest.raises(SlemError, match="warmup_epochs") as info:
        parse_nas_config({"data": {"name": "mnist1d"}, "darts": {"epochs": 1, "warmup_epochs": 1}})
    assert "\n" not in str(info.value)
    flat = [(x.flatten(1), y) for x, y in tiny_data()]
    with pytest.raises(SlemError, match=r"signals \(channels, length\) or images"):
        DartsSearch(DartsConfig(), CellSpace(), TINY, flat, 2, device="cpu")


def test_partial_channels_search_runs() -> None:
    s = DartsSearch(
        DartsConfig(epochs=1, batch_size=16, partial_channels=2),
        CellSpace(),
        TINY,
        tiny_data(),
        2,
        device="cpu",
    )
    s.fit(progress=False)
    assert s.weight_history().shape == (1, 3, 5)
    assert darts_summary(s)["partial_channels"] == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_darts_finds_a_convolution_where_only_one_solves_the_task(seed: int) -> None:
    """On :func:`gap_task` the architecture weights move to a convolution: the strongest
    weight of the cell (0.2 each at the start) is a convolution's and above 0.5, the derived
    cell holds one, and the supernet learns the task (chance: 50%)."""
    data = [gap_task(256, 10 + seed), gap_task(256, 20 + seed), gap_task(128, 30 + seed)]
    cfg = DartsConfig(order="second", epochs=10, batch_size=32, arch_lr=3e-2, lr=0.05)
    s = DartsSearch(
        cfg,
        CellSpace(),
        NetworkConfig(channels=8, cells=1, stages=1),
        data,
        2,
        seed=seed,
        device="cpu",
    )
    s.fit(progress=False)
    weights = s.mixing().detach()
    operations = s.mixing.space.operations
    edge, op = divmod(int(weights.argmax()), len(operations))
    assert operations[op] in ("conv_1", "conv_3"), weights
    assert float(weights[edge, op]) > 0.5, weights
    assert {"conv_1", "conv_3"} & set(s.mixing.genotype().ops)
    assert darts_summary(s)["supernet_val_accuracy"] > 75.0
