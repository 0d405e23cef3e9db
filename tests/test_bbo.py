"""The learned black-box optimizer: test functions, the three meta losses, meta-training that
beats random search on unseen functions, the artifact and the ``slem bbo`` commands."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from slem.cli.app import app
from slem.data.functions import branin, hartmann3, hartmann6, held_out, training_batch
from slem.errors import SlemError
from slem.methodology import RNNBlackBoxOptimizer, load_methodology
from slem.methodology.bbo import History, propose_and_observe
from slem.train.bbo import (
    BBOMetaTrainer,
    expected_improvement,
    observed_improvement,
    search_regret,
)
from slem.train.config import BBOConfig


def test_held_out_functions_have_their_known_minima() -> None:
    # Branin's three minimisers, mapped to the unit square
    for x1, x2 in [(-math.pi, 12.275), (math.pi, 2.275), (9.42478, 2.475)]:
        x = torch.tensor([[(x1 + 5) / 15, x2 / 15]])
        assert float(branin(x)) == pytest.approx(0.397887, abs=1e-4)
    assert float(hartmann3(torch.tensor([[0.114614, 0.555649, 0.852547]]))) == pytest.approx(
        -3.86278, abs=1e-4
    )
    x6 = torch.tensor([[0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]])
    assert float(hartmann6(x6)) == pytest.approx(-3.32237, abs=1e-4)
    gp = held_out("gp2", batch=3)
    with torch.no_grad():
        dense = gp(torch.rand(20000, 3, 2)).min(0).values
    assert (gp.minimum <= dense + 1e-6).all()  # the estimate is at least as low as dense search
    with pytest.raises(SlemError, match="unknown test function 'rosen'"):
        held_out("rosen")
    for bad in ("gp0", "gp33"):
        with pytest.raises(SlemError, match="gpD takes D from 1 to 32"):
            held_out(bad)


def test_training_functions_are_normalised_batched_and_differentiable() -> None:
    g = torch.Generator().manual_seed(0)
    fb = training_batch(["gp", "quadratic", "standard"], 12, 3, g)
    x = torch.rand(12, 3, requires_grad=True)
    y = fb(x)
    assert y.shape == (12,)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        values = fb(torch.rand(4000, 12, 3))
    q = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75]), dim=0)
    assert q[1].abs().max() < 0.15 and ((q[2] - q[0]) - 1).abs().max() < 0.15
    with pytest.raises(SlemError, match="unknown function families"):
        training_batch(["gps"], 4, 2, g)


def test_meta_losses() -> None:
    ys = torch.tensor([[3.0], [1.0], [2.0], [0.5]])
    assert float(observed_improvement(ys)) == pytest.approx((1 - 3) + 0 + (0.5 - 1))
    # EI of a query far from the data is about the prior's EI below the best value
    xs = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])
    ei = expected_improvement(xs, torch.tensor([[0.0], [0.0]]), lengthscale=0.1)
    assert float(ei) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-3)
    h = History()
    assert float(h.standardise(torch.tensor([5.0]))) == 0.0
    assert float(h.standardise(torch.tensor([7.0]))) == pytest.approx(1 / math.sqrt(2))


@pytest.mark.parametrize("loss", ["sum", "oi", "ei"])
def test_each_loss_trains(loss: str) -> None:
    meta = BBOMetaTrainer(BBOConfig(dim=2, iterations=3, batch_size=8, steps=6, loss=loss))
    meta.fit()
    assert len(meta.history) == 3 and all(math.isfinite(r["meta_loss"]) for r in meta.history)


def test_meta_training_beats_random_search_on_unseen_functions(tmp_path: Path) -> None:
    """On unimodal functions a learned proposer must soon beat random search: it learns to
    search around its incumbent. Evaluated on fresh quadratics it never saw."""
    cfg = BBOConfig(dim=2, iterations=150, batch_size=32, steps=12, families=["quadratic"], lr=1e-2)
    meta = BBOMetaTrainer(cfg)
    fresh = training_batch(["quadratic"], 256, 2, torch.Generator().manual_seed(99))

    def best_found() -> float:
        with torch.no_grad():
            _, ys = propose_and_observe(meta.net, fresh, 12, 256, torch.Generator().manual_seed(1))
        return float(ys.min(0).values.mean())

    untrained = best_found()
    net = meta.fit()
    g = torch.Generator().manual_seed(2)
    random_search = float(fresh(torch.rand(12, 256, 2, generator=g)).min(0).values.mean())
    assert best_found() < random_search - 0.02 and best_found() < untrained - 0.04
    assert isinstance(net, RNNBlackBoxOptimizer)
    loaded, info = load_methodology(net.save(tmp_path / "art"))
    assert info["kind"] == "learned_bbo"
    test = held_out("branin", batch=4)
    torch.testing.assert_close(
        search_regret(loaded, test, 15, seed=3), search_regret(net, test, 15, seed=3)
    )
    with pytest.raises(SlemError, match="searches 2-D spaces; 'hartmann3' is 3-D"):
        search_regret(net, held_out("hartmann3"), 5)


def test_cli_train_resume_and_run(tmp_path: Path, runner: Any) -> None:
    out = tmp_path / "bbo"
    args = ["bbo", "train", "--dim", "2", "--iterations", "4", "--steps", "5", "--out", str(out)]
    res = runner.invoke(app, [*args, "--set", "batch_size=4", "--set", "checkpoint_every=2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 4 and summary["held_out_regret"] >= 0
    assert (out / "plots" / "meta_training.png").is_file()
    res = runner.invoke(app, ["bbo", "run", str(out / "methodology"), "--function", "branin"])
    assert res.exit_code == 0 and "random search" in res.output
    res = runner.invoke(app, ["bbo", "train", "--dim", "0", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "dim" in res.output
    res = runner.invoke(app, ["bbo", "train", "--loss", "best", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "loss" in res.output
    res = runner.invoke(app, ["bbo", "train", *args[2:]])
    assert res.exit_code == 2 and "already holds a run" in res.output
