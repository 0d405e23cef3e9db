"""MLR-SNet: the learned learning-rate schedule, its exact one-step hypergradient, transfer to
another dataset and architecture, resume, and the guard against a runaway rate."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from slem.bilevel import RateProblem
from slem.cli.app import app
from slem.data import LoadOptions, load_dataset, make_task
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import MLRSNet, load_methodology, lr_scale
from slem.train import (
    Callback,
    CheckpointCallback,
    NonFiniteLoss,
    TrainingStopped,
    make_trainer,
    parse_train_config,
)
from slem.train.schedule import ScheduleTrainer
from slem.train.trainer import Trainer
from tests.test_train import StopAt


@pytest.fixture(scope="module")
def task() -> Task:
    data = load_dataset("mnist1d", LoadOptions(size=1500))
    return make_task(data, meta_per_class=20, seed=0)


def config(method: str = "lr_schedule", epochs: int = 3, **sections: Any) -> Any:
    values: dict[str, Any] = {
        "method": method,
        "data": {"name": "mnist1d", "meta_per_class": 20},
        "optim": {"epochs": epochs, "batch_size": 64},
        "model": {"arch": "mlp", "width": 32},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return parse_train_config(values)


def test_scale_follows_the_mlr_snet_formula() -> None:
    loss, c = math.log(10), 10
    expected = math.sqrt(loss) * math.log(loss * c) / c**0.25 / 4
    assert lr_scale(loss, c) == pytest.approx(expected)
    assert lr_scale(loss, c, momentum=0.9) == pytest.approx(0.1 * expected)
    with pytest.raises(SlemError, match="initial training loss is nan"):
        lr_scale(float("nan"), 10)


def test_stages_and_artifact_round_trip(tmp_path: Path) -> None:
    net = MLRSNet(hidden=8, n_stages=3)
    assert [net.stage_at(f) for f in (0.0, 0.3, 1 / 3, 0.5, 0.99)] == [0, 0, 1, 1, 2]
    with torch.no_grad():
        net.live.out.bias += 1.0  # meta-training moves the live (last) stage only
    net.snapshot(1)
    loss, state = torch.tensor(1.0), net.initial_state()
    with torch.no_grad():
        f0, f1, f2 = (float(net(loss, state, s)[0]) for s in range(3))
    assert f0 != f1 and f1 == f2
    loaded, meta = load_methodology(net.save(tmp_path / "art"))
    assert isinstance(loaded, MLRSNet) and meta["kind"] == "lr_schedule"
    with torch.no_grad():
        assert [float(loaded(loss, state, s)[0]) for s in range(3)] == [f0, f1, f2]
    with pytest.raises(SlemError, match="switch_at"):
        MLRSNet(n_stages=2, switch_at=[0.5, 0.9])


def test_meta_step_is_the_exact_one_step_hypergradient(task: Task) -> None:
    """d meta_loss / d theta through w' = w - lr(theta) * d, with d taken from torch's own SGD
    (momentum + weight decay) step, against the trainer's meta step."""
    cfg = config(schedule={"batch_size": 10_000})  # the whole meta set: no sampling
    trainer = make_trainer(cfg, task)
    assert isinstance(trainer, ScheduleTrainer)
    trainer.optimizer.state.clear()
    trainer.on_epoch_start()
    model, x, y = trainer.model, trainer.train_x[:64], trainer.train_y[:64]
    for _ in range(2):  # build up a momentum buffer
        trainer.train_step(x, y, torch.arange(64))
    assert trainer.meta_optimizer is not None
    trainer.meta_optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]
    model.train()
    snapshot = copy.deepcopy(model)
    opt_snapshot = copy.deepcopy(trainer.optimizer.state_dict())
    loss = F.cross_entropy(model(x), y)
    params = dict(model.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    assert trainer.meta_step is not None
    problem, inner, outer = trainer.meta_problem(x, y, loss.detach(), grads)
    assert isinstance(problem, RateProblem)  # one backward, no second derivative
    result = trainer.meta_step(problem, inner, outer)
    assert result.diagnostics["path"] == "rate"
    got = trainer.schedule.live.out.bias.grad.clone()

    # reference: torch's SGD gives the direction d; L(alpha) at w - alpha * d by autograd
    probe = copy.deepcopy(snapshot)
    opt = torch.optim.SGD(probe.parameters(), lr=1.0, momentum=0.9, weight_decay=5e-4)
    opt.load_state_dict(opt_snapshot)
    opt.param_groups[0]["lr"] = 1.0
    probe.train()
    F.cross_entropy(probe(x), y).backward()
    opt.step()
    d = {
        n: p.detach() - q.detach()
        for (n, p), (_, q) in zip(
            snapshot.named_parameters(), probe.named_parameters(), strict=True
        )
    }
    factor, _ = trainer.schedule(loss.detach() / trainer.loss_norm, trainer.lr_state, -1)
    alpha = trainer.scale * factor.detach()
    shifted = {n: (p.detach() - alpha * d[n]).requires_grad_(True) for n, p in params.items()}
    meta_loss = F.cross_entropy(
        torch.func.functional_call(snapshot, shifted, (trainer.meta_x,)), trainer.meta_y
    )
    g_shift = torch.autograd.grad(meta_loss, list(shifted.values()))
    dl_dalpha = -sum((g * d[n]).sum() for g, n in zip(g_shift, shifted, strict=True))
    bias = trainer.schedule.live.out.bias
    f, _ = trainer.schedule(loss.detach() / trainer.loss_norm, trainer.lr_state, -1)
    (dalpha_db,) = torch.autograd.grad(trainer.scale * f, bias)
    torch.testing.assert_close(got, dl_dalpha * dalpha_db, rtol=2e-3, atol=1e-7)


def test_meta_train_then_apply_to_another_dataset_and_architecture(
    task: Task, tmp_path: Path, runner: Any
) -> None:
    from slem.report import write_run_plots
    from slem.train import train_run

    record, run_dir = train_run(
        config(epochs=3), tmp_path / "meta", progress=False, render=write_run_plots
    )
    s = record.summary
    assert s["lr_scale"] > 0 and s["lr_first"] != s["lr_last"]
    assert (run_dir / "plots" / "lr_schedule.png").is_file()
    assert [Path(p).name for p in s["plots"]] == ["learning_curves.png", "lr_schedule.png"]
    assert record.arrays["lr_trace"][0] == s["lr_first"]
    artifact = run_dir / "methodology"
    info = json.loads((artifact / "methodology.json").read_text())
    assert info["kind"] == "lr_schedule" and info["meta_trained_on"]["dataset"] == "mnist1d"
    # the snapshot after epoch 1 differs from the final net
    net, _ = load_methodology(artifact)
    loss, state = torch.tensor(0.5), net.initial_state()
    with torch.no_grad():
        assert float(net(loss, state, 0)[0]) != float(net(loss, state, 2)[0])  # type: ignore[arg-type]

    out = tmp_path / "apply"
    res = runner.invoke(
        app,
        ["apply", str(artifact), "--data", "digits", "--epochs", "6", "--out", str(out), "--quiet"],
    )
    assert res.exit_code == 0, res.output
    applied = json.loads((out / "summary.json").read_text())
    assert applied["method"] == "apply" and applied["n_meta"] == 0
    assert applied["test_accuracy"] > 0.8  # digits with an MLP it never saw
    assert (out / "plots" / "lr_schedule.png").is_file()


def test_resume_continues_exactly(task: Task, tmp_path: Path) -> None:
    cfg = config(epochs=2)
    full = make_trainer(cfg, task).fit()
    ckpt = tmp_path / "checkpoint.pt"
    first = make_trainer(cfg, task, callbacks=[CheckpointCallback(ckpt), StopAt(25)])
    with pytest.raises(TrainingStopped):
        first.fit()
    second = make_trainer(cfg, task)
    second.load_checkpoint(ckpt)
    resumed = second.fit()
    assert isinstance(second, ScheduleTrainer) and isinstance(first, ScheduleTrainer)
    assert resumed.summary["test_accuracy"] == full.summary["test_accuracy"]
    assert resumed.summary["lr_last"] == full.summary["lr_last"]


class PoisonScheduleAt(Callback):
    """Turns the schedule's output into NaN after ``step`` steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.progress.global_step == self.step:
            assert isinstance(trainer, ScheduleTrainer)
            with torch.no_grad():
                for stage in trainer.schedule.stages:
                    stage.out.bias.fill_(float("nan"))


def test_runaway_learned_rate_stops_and_keeps_the_checkpoint(task: Task, tmp_path: Path) -> None:
    cfg = config("apply", epochs=2, methodology=str(tmp_path / "unused"))
    ckpt = tmp_path / "checkpoint.pt"
    callbacks = [CheckpointCallback(ckpt, every=1), PoisonScheduleAt(5)]
    trainer = make_trainer(cfg, task, methodology=MLRSNet(hidden=8), callbacks=callbacks)
    with pytest.raises(NonFiniteLoss, match=r"learned learning rate became nan .*schedule.max_lr"):
        trainer.fit()
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_config_errors() -> None:
    with pytest.raises(SlemError, match="lr_schedule meta-learns on a held-out meta set"):
        parse_train_config({"method": "lr_schedule", "data": {"name": "mnist1d"}})
    with pytest.raises(SlemError, match=r"set optim\.optimizer sgd"):
        config(optim={"optimizer": "adam"})
    with pytest.raises(SlemError, match=r"schedule\.stages"):
        config(schedule={"stages": 0})


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_baseline_optimizers_and_onecycle(task: Task, optimizer: str) -> None:
    optim = {"optimizer": optimizer, "lr": 1e-2, "schedule": "onecycle", "momentum": 0.0}
    cfg = config("erm", epochs=2, optim=optim)
    trainer = make_trainer(cfg, task)
    assert type(trainer.optimizer).__name__.lower() == optimizer
    total = trainer.config.optim.epochs * trainer.plan.steps_per_epoch
    rates = [trainer.lr_at(s) for s in range(total)]
    peak = max(range(total), key=rates.__getitem__)
    assert rates[0] == pytest.approx(1e-2 / 25) and abs(peak - 0.3 * total) <= 1
    assert rates[-1] < 1e-4
    assert trainer.fit().summary["test_accuracy"] > 0.2
