"""The coordinatewise LSTM optimizer: preprocessing, the drop-in torch optimizer, its
differentiable twin and meta-gradient through the bilevel engine, truncated meta-training that
learns, exact resume, CLI train/apply, and its errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from slem.bilevel import BilevelProblem, Params, hypergrad
from slem.cli.app import app
from slem.errors import SlemError
from slem.methodology import (
    LearnedInnerOptimizer,
    LearnedOptimizer,
    LSTMOptimizerNet,
    preprocess_gradient,
)
from slem.train import Callback, CheckpointCallback, TrainingStopped, parse_train_config
from slem.train.config import LearnedOptimizerConfig
from slem.train.learned_optimizer import OptimizerMetaTrainer, build_population

SMALL = {
    "datasets": ["digits"],
    "dataset_size": 600,
    "widths": [8],
    "depths": [1],
    "activations": ["relu", "tanh"],
    "horizon": 40,
    "unroll": 10,
    "batch_size": 64,
    "checkpoint_every": 5,
}


def test_preprocessing_keeps_magnitude_and_sign() -> None:
    g = torch.tensor([1.0, -1e-3, 1e-6, -1e-6, 0.0])
    out = preprocess_gradient(g, p=10.0)
    assert out.shape == (5, 2)
    assert out[0].tolist() == [0.0, 1.0]
    assert out[1, 0] == pytest.approx(math.log(1e-3) / 10) and out[1, 1] == -1.0
    # below e^-10 ~ 4.5e-5: (-1, e^p g), which keeps the sign
    assert out[2, 0] == -1.0 and out[2, 1] == pytest.approx(1e-6 * math.exp(10), rel=1e-5)
    assert out[3, 1] < 0 and out[4].tolist() == [-1.0, 0.0]


def test_drop_in_torch_optimizer_applies_the_net_per_coordinate() -> None:
    torch.manual_seed(0)
    net = LSTMOptimizerNet(hidden=6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = LearnedOptimizer(model.parameters(), net)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    F.cross_entropy(model(x), y).backward()
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    expected, _ = net(flat, net.initial_state(len(flat)))
    opt.step()
    moved = torch.cat([(p.detach() - before[n]).reshape(-1) for n, p in model.named_parameters()])
    torch.testing.assert_close(moved, expected)
    # the memory is per coordinate and survives a state_dict round trip
    state = copy.deepcopy(opt.state_dict())
    other = LearnedOptimizer(model.parameters(), net)
    other.load_state_dict(state)
    wrong = LearnedOptimizer(nn.Linear(3, 9).parameters(), net)
    with pytest.raises(SlemError, match=r"saved for parameters of sizes \[12, 4, 8, 2\]"):
        wrong.load_state_dict(state)


def test_meta_gradient_is_the_engines_first_order_trajectory_hypergradient() -> None:
    """The engine's ``first_order`` hypergradient of the trajectory objective, with the net as
    a :class:`LearnedInnerOptimizer`, is the hand-rolled meta-gradient of Andrychowicz et al.:
    the losses summed over the iterates, the gradients fed to the LSTM as inputs, back-
    propagated through the updates and the memory; the final params and memory carry over."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(hidden=6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    n_coords = sum(p.numel() for p in theta0.values())
    opt = LearnedInnerOptimizer(net)
    zero = opt.init(theta0)["memory"]
    assert [tuple(h.shape) for h, _ in zero] == [(n_coords, 6)] * 2
    memory0 = [(0.1 * torch.randn_like(h), 0.1 * torch.randn_like(c)) for h, c in zero]
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(4)]
    weights = [0.1, 0.2, 0.3, 0.4]

    def loss(params: Params, hyper: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        return F.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])

    params = {n: p.clone().requires_grad_(True) for n, p in theta0.items()}
    memory = memory0
    total = torch.zeros(())
    for w, batch in zip(weights, batches, strict=True):
        value = loss(params, {}, batch)
        total = total + w * value
        grads = torch.autograd.grad(value, list(params.values()), retain_graph=True)
        step, memory = net(torch.cat([g.reshape(-1) for g in grads]), memory)
        steps = step.split([p.numel() for p in params.values()])
        params = {n: p + s.view(p.shape) for (n, p), s in zip(params.items(), steps, strict=True)}
    expected = torch.autograd.grad(total, list(net.parameters()))

    problem = BilevelProblem(
        theta0, dict(net.named_parameters()), loss, loss, opt, optimizer_state={"memory": memory0}
    )
    result = hypergrad(
        problem,
        "first_order",
        inner_batches=batches,
        outer_batch=None,
        trajectory_weights=[*weights, 0.0],
    )
    for (name, _), g in zip(net.named_parameters(), expected, strict=True):
        torch.testing.assert_close(result.grads[name], g)
    assert result.outer_loss == pytest.approx(float(total.detach()), rel=1e-6)
    assert result.params is not None
    for name, p in params.items():
        torch.testing.assert_close(result.params[name], p.detach())
    for (h, c), (h_ref, c_ref) in zip(result.optimizer_state["memory"], memory, strict=True):
        torch.testing.assert_close(h, h_ref.detach())
        torch.testing.assert_close(c, c_ref.detach())
        assert not h.requires_grad


def test_meta_training_learns_to_optimize_a_held_out_optimizee() -> None:
    cfg = LearnedOptimizerConfig(**{**SMALL, "iterations": 60})
    meta = OptimizerMetaTrainer(cfg, seed=0)
    untrained = copy.deepcopy(meta.net)
    trained = meta.fit()

    def final_loss(net: LSTMOptimizerNet) -> float:
        """A wider MLP than any optimizee, 60 steps on digits."""
        (task,) = build_population(
            LearnedOptimizerConfig(**{**SMALL, "widths": [48], "activations": ["relu"]}),
            1,
            meta.device,
        )
        torch.manual_seed(3)
        model = task.make_model()
        opt = LearnedOptimizer(model.parameters(), net)
        g = torch.Generator().manual_seed(5)
        for _ in range(60):
            idx = torch.randint(len(task.y), (64,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(task.x[idx]), task.y[idx]).backward()
            opt.step()
        with torch.no_grad():
            return float(F.cross_entropy(model(task.x), task.y))

    start = math.log(10)
    assert final_loss(trained) < 0.6 * start
    assert final_loss(trained) < final_loss(untrained) - 0.3


def test_meta_training_resumes_exactly(tmp_path: Path) -> None:
    """Stopped at iteration 7 (mid-epoch of the Loop's 10), then continued from the
    checkpoint the stop wrote: the same meta losses as one uninterrupted run."""
    cfg = LearnedOptimizerConfig(**{**SMALL, "iterations": 12})
    full = OptimizerMetaTrainer(cfg, seed=0)
    full.fit(progress=False)
    ckpt = tmp_path / "meta.pt"

    class StopAt7(Callback):
        def on_step_end(self, trainer: Any, stats: dict[str, float]) -> None:
            if trainer.progress.global_step == 7:
                trainer.request_stop("interrupted")

    saver = CheckpointCallback(ckpt, every=5)
    first = OptimizerMetaTrainer(cfg, seed=0, callbacks=[saver, StopAt7()])
    with pytest.raises(TrainingStopped):
        first.fit(progress=False)
    second = OptimizerMetaTrainer(cfg, seed=0)
    second.load_checkpoint(ckpt)
    assert second.iteration == 7 and second.progress.step_in_epoch == 1
    second.fit(progress=False)
    assert [r["meta_loss"] for r in second.history] == [r["meta_loss"] for r in full.history]
    assert [r["train_meta_loss"] for r in second.progress.history] == [
        r["train_meta_loss"] for r in full.progress.history
    ]


def test_cli_train_then_apply_to_a_larger_network(tmp_path: Path, runner: Any) -> None:
    cfg = tmp_path / "lopt.yaml"
    cfg.write_text(
        json.dumps(
            {
                "method": "learned_optimizer",
                "data": {"name": "wine"},
                "model": {"arch": "mlp", "width": 64},
                "optim": {"epochs": 3, "batch_size": 32},
                "learned_optimizer": {**SMALL, "iterations": 10},
            }
        )
    )
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "methodology" / "methodology.json").read_text())
    assert info["kind"] == "learned_optimizer"
    assert info["meta_trained_on"]["population"] == ["digits/mlp8x1-relu", "digits/mlp8x1-tanh"]
    assert (out / "plots" / "meta_training.png").is_file()
    assert len((out / "meta_metrics.jsonl").read_text().splitlines()) == 10
    applied = tmp_path / "applied"
    res = runner.invoke(
        app,
        [
            "apply",
            str(out / "methodology"),
            "--data",
            "breast_cancer",
            "--epochs",
            "2",
            "--out",
            str(applied),
            "--set",
            "model.width=96",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((applied / "summary.json").read_text())["method"] == "apply"


def test_config_errors() -> None:
    base: dict[str, Any] = {"method": "learned_optimizer", "data": {"name": "digits"}}
    with pytest.raises(SlemError, match=r"unroll \(50\) must not exceed horizon \(20\)"):
        parse_train_config({**base, "learned_optimizer": {"unroll": 50, "horizon": 20}})
    with pytest.raises(SlemError, match=r"learned_optimizer\.widths needs at least one entry"):
        parse_train_config({**base, "learned_optimizer": {"widths": []}})
    with pytest.raises(SlemError, match="'diabetes' is a regression set"):
        build_population(LearnedOptimizerConfig(datasets=["diabetes"]), 0, torch.device("cpu"))


def test_both_phases_run_through_make_trainer() -> None:
    """Method learned_optimizer is one method like the others: make_trainer meta-trains the
    optimizer on its population (phase one, in memory) and trains with it (phase two), so the
    Python API and slem hpo run it without the run writer."""
    from slem.data import build_task
    from slem.train import make_trainer

    cfg = parse_train_config(
        {
            "method": "learned_optimizer",
            "data": {"name": "digits", "size": 400},
            "optim": {"epochs": 1, "batch_size": 64},
            "learned_optimizer": {**SMALL, "iterations": 3},
        }
    )
    trainer = make_trainer(cfg, build_task(cfg.data))
    assert isinstance(trainer.optimizer, LearnedOptimizer)
    summary = trainer.fit(progress=False).summary
    assert summary["method"] == "learned_optimizer" and 0.0 <= summary["test_accuracy"] <= 1.0
