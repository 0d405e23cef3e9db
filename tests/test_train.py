"""Trainers on small real tasks: every method runs, meta-learning learns something, runs
resume exactly, and bad inputs stop with clear messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slem.data import LoadOptions, load_dataset, make_task
from slem.data.task import Task
from slem.errors import SlemError
from slem.train import Callback, NonFiniteLoss, TrainingStopped, make_trainer, parse_train_config
from slem.train.meta_trainer import MetaTrainer
from slem.train.trainer import Trainer


@pytest.fixture(scope="module")
def task() -> Task:
    data = load_dataset("mnist1d", LoadOptions(size=2500))
    return make_task(data, noise="symmetric:0.4", meta_per_class=10, seed=0)


def config(method: str, epochs: int = 2, **sections: Any) -> Any:
    values: dict[str, Any] = {
        "method": method,
        "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 10},
        "optim": {"epochs": epochs, "batch_size": 64},
        "model": {"width": 16},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            values.setdefault(key, {}).update(value)
        else:
            values[key] = value
    return parse_train_config(values)


@pytest.mark.parametrize("method", ["erm", "gce", "sce", "bootstrap", "class_balanced", "finetune"])
def test_baselines_run(task: Task, method: str) -> None:
    result = make_trainer(config(method), task).fit()
    s = result.summary
    assert s["method"] == method and 0.0 <= s["test_accuracy"] <= 1.0
    assert len(result.history) == (2 + (5 if method == "finetune" else 0))
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


@pytest.mark.parametrize(
    ("method", "meta"),
    [
        ("mwnet", {"objective": "clean"}),
        ("mwnet", {"objective": "dac"}),
        ("mwnet", {"objective": "clean+dac", "order": "lagged"}),
        ("cmwnet", {"objective": "clean", "jvp_mode": "difference"}),
        ("cmwnet_sl", {"objective": "selected"}),
        ("mwnet", {"objective": "clean", "hypergrad": "finite_difference", "interval": 2}),
        ("mwnet", {"objective": "clean", "hypergrad": "unrolled"}),
    ],
)
def test_meta_methods_run(task: Task, method: str, meta: dict[str, Any]) -> None:
    trainer = make_trainer(config(method, meta=meta), task)
    assert isinstance(trainer, MetaTrainer)
    result = trainer.fit()
    assert result.train_weights is not None and result.train_weights.shape == (len(task.train),)
    assert result.summary["weight_auc"] is not None
    assert result.summary["meta_step_time_ratio"] is not None
    bn = next(m for m in trainer.model.modules() if isinstance(m, nn.BatchNorm1d))
    assert (
        int(bn.num_batches_tracked) == trainer.progress.global_step
    )  # running stats: once per step


def test_mwnet_learns_to_downweight_noisy_labels(task: Task) -> None:
    result = make_trainer(config("mwnet", epochs=4), task).fit()
    assert result.summary["weight_auc"] > 0.75  # chance is 0.5
    last = result.history[-1]
    assert last["weight_mean_clean"] > last["weight_mean_noisy"]


def test_dac_mr_without_any_clean_data_separates_noisy_samples() -> None:
    data = load_dataset("mnist1d", LoadOptions(size=2500))
    no_meta = make_task(data, noise="symmetric:0.4", seed=0)
    assert no_meta.meta is None
    cfg = config("mwnet", epochs=4, meta={"objective": "dac"}, data={"meta_per_class": None})
    result = make_trainer(cfg, no_meta).fit()
    assert result.summary["weight_auc"] > 0.6


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.progress.global_step == self.step:
            trainer.request_stop("interrupted")


TASK_INPUTS = {"inputs": ["loss_ratio", "history", "progress", "noise_estimate"]}


@pytest.mark.parametrize(
    ("method", "meta", "where"),
    [
        ("erm", {}, "mid-epoch"),
        ("cmwnet_sl", {"objective": "selected"}, "mid-epoch"),
        ("erm", {}, "epoch end"),
        ("cmwnet", TASK_INPUTS, "mid-epoch"),  # the observer's loss histories resume too
    ],
)
def test_resume_continues_exactly(
    task: Task, tmp_path: Path, method: str, meta: dict[str, Any], where: str
) -> None:
    """Stopped mid-epoch, or after an epoch's last step before the epoch was closed (the
    resumed Loop closes it first), the run goes on as if never stopped."""
    cfg = config(method, epochs=3, meta=meta)
    full = make_trainer(cfg, task).fit()
    from slem.train import CheckpointCallback

    ckpt = tmp_path / "checkpoint.pt"
    per_epoch = make_trainer(cfg, task).plan.steps_per_epoch
    stop = 50 if where == "mid-epoch" else per_epoch
    first = make_trainer(cfg, task, callbacks=[CheckpointCallback(ckpt), StopAt(stop)])
    with pytest.raises(TrainingStopped):
        first.fit()
    assert ckpt.is_file()
    second = make_trainer(cfg, task)
    second.load_checkpoint(ckpt)
    assert second.progress.global_step == stop
    assert (second.progress.epoch, second.progress.step_in_epoch) == (
        (1, 50 - per_epoch) if where == "mid-epoch" else (0, per_epoch)
    )
    resumed = second.fit()
    assert resumed.summary["test_accuracy"] == full.summary["test_accuracy"]
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_bad_inputs(task: Task, tmp_path: Path) -> None:
    with pytest.raises(SlemError, match=r"method: Input should be 'erm', 'gce'"):
        parse_train_config({"method": "mwnett", "data": {"name": "mnist1d"}})
    with pytest.raises(SlemError, match=r"meta.objective 'clean' needs a clean meta set"):
        parse_train_config({"method": "mwnet", "data": {"name": "mnist1d"}})
    with pytest.raises(SlemError, match=r"optim\.lr"):
        parse_train_config({"method": "erm", "data": {"name": "mnist1d"}, "optim": {"lr": -1}})
    # a meta set smaller than the number of classes
    small = Task(
        **{
            **task.__dict__,
            "meta": task.train.__class__(
                task.meta.X[:5],
                task.meta.y[:5],
                task.meta.y[:5],
                task.meta.noisy_mask[:5],
                task.meta.index[:5],
            ),
        }
    )
    with pytest.raises(SlemError, match="fewer than the 10 classes"):
        make_trainer(config("mwnet"), small)
    # a model whose output does not fit the classes
    with pytest.raises(SlemError, match=r"model output has shape \(2, 7\); expected \(batch, 10\)"):
        make_trainer(config("erm"), task, model=nn.Sequential(nn.Flatten(), nn.Linear(40, 7)))


def test_non_finite_loss_stops_and_keeps_the_checkpoint(task: Task, tmp_path: Path) -> None:
    from slem.train import CheckpointCallback

    ckpt = tmp_path / "checkpoint.pt"
    cfg = config("erm", optim={"lr": 1e12, "schedule": "constant"})
    trainer = make_trainer(cfg, task, callbacks=[CheckpointCallback(ckpt, every=1)])
    with pytest.raises(NonFiniteLoss, match=r"became (nan|inf|non-finite).*checkpoint"):
        trainer.fit()
    state = torch.load(ckpt, weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_stock_module_and_regression_guard(task: Task) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))
    result = make_trainer(config("mwnet", epochs=2), task, model=model).fit()
    assert result.summary["weight_auc"] is not None
    reg = make_task(load_dataset("diabetes"))
    with pytest.raises(SlemError, match="needs class labels, but 'diabetes' is a regression task"):
        make_trainer(config("erm"), reg)


def test_apply_frozen_cmwnet_sl_with_label_correction(task: Task, tmp_path: Path) -> None:
    from slem.methodology import CMWNetSL, load_methodology

    CMWNetSL(n_groups=3, hidden=8).save(tmp_path / "art")
    frozen, _ = load_methodology(tmp_path / "art")
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    cfg = config("apply", methodology=str(tmp_path / "art"))
    trainer = make_trainer(cfg, task, methodology=frozen)
    assert trainer.sample_weights.teacher is not None  # label correction needs the EMA teacher
    result = trainer.fit()
    assert result.summary["weight_auc"] is not None
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, before[k])  # applied frozen: the methodology never changes


def test_runs_do_not_depend_on_what_ran_before_in_the_process(task: Task) -> None:
    first = make_trainer(config("mwnet", epochs=2), task).fit()
    torch.rand(1000)  # consume the global RNG as another run would
    make_trainer(config("gce", epochs=1), task).fit()
    second = make_trainer(config("mwnet", epochs=2), task).fit()
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]


def test_label_correction_mixes_with_weights_in_unit_interval(task: Task) -> None:
    trainer = make_trainer(config("cmwnet_sl", epochs=2), task)
    losses = torch.rand(64) * 5
    assert trainer.sample_weights is not None
    w = trainer.sample_weights.weights(losses, trainer.train_y[:64], torch.arange(64))
    assert float(w.detach().min()) >= 0.0 and float(w.detach().max()) <= 1.0


def test_teacher_starts_as_the_model_and_reports_its_pseudo_labels(task: Task) -> None:
    """The EMA decay ramps up from 0, so the teacher is the model after the first step (not a
    blend with the random initialization); every epoch row says how the teacher's
    pseudo-labels relate to the true labels."""
    trainer = make_trainer(config("cmwnet_sl", epochs=2), task)
    x, y = trainer.train_x[:64], trainer.train_y[:64]
    trainer.train_step(x, y, torch.arange(64))
    assert trainer.sample_weights.teacher is not None
    for t, s in zip(
        trainer.sample_weights.teacher.net.parameters(), trainer.model.parameters(), strict=True
    ):
        torch.testing.assert_close(t, s.detach())
    trainer.progress.global_step = 10_000  # late in training: the configured decay
    before = [p.clone() for p in trainer.sample_weights.teacher.net.parameters()]
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    assert trainer.sample_weights is not None
    trainer.sample_weights.after_step(trainer.model, trainer.progress.global_step)
    decay = trainer.config.meta.ema_decay
    for t, b in zip(trainer.sample_weights.teacher.net.parameters(), before, strict=True):
        torch.testing.assert_close(t, b + (1 - decay))
    metrics = trainer.sample_weights.teacher.metrics(trainer.train_x, task.train)
    assert set(metrics) == {"pseudo_correct_noisy", "pseudo_keeps_noise", "pseudo_wrong_clean"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values() if v is not None)
    row = trainer.end_epoch()
    assert "pseudo_correct_noisy" in row


class HardInterrupt(Callback):
    def on_step_end(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if trainer.progress.global_step == 15:
            raise KeyboardInterrupt


def test_hard_interrupt_keeps_the_last_consistent_checkpoint(task: Task, tmp_path: Path) -> None:
    from slem.train import CheckpointCallback

    ckpt = tmp_path / "checkpoint.pt"
    trainer = make_trainer(
        config("erm", epochs=3),
        task,
        callbacks=[CheckpointCallback(ckpt, every=10), HardInterrupt()],
    )
    with pytest.raises(TrainingStopped, match="aborted"):
        trainer.fit()
    assert torch.load(ckpt, weights_only=False)["global_step"] == 10


def test_cnn2d_channels_last_computes_what_nchw_computes() -> None:
    """The image CNN runs channels-last for speed; outputs and gradients must be those of the
    same layers in the default NCHW layout."""
    import copy

    from slem.train.models import ChannelsLast, cnn2d

    torch.manual_seed(0)
    fast = cnn2d(1, 10, width=8)
    assert isinstance(fast[0], ChannelsLast)
    assert fast[1].weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(fast)[1:].to(memory_format=torch.contiguous_format)
    x = torch.randn(6, 1, 12, 12)
    y = torch.randint(0, 10, (6,))
    for net in (fast, plain):
        nn.functional.cross_entropy(net(x), y).backward()
    torch.testing.assert_close(fast(x), plain(x))
    for a, b in zip(fast[1:].parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_mwnet_meta_trains_the_image_cnn() -> None:
    """The bilevel step (functional calls, virtual SGD step) works through the channels-last
    CNN on (1, 8, 8) images."""
    data = load_dataset("digits-images", LoadOptions())
    images = make_task(data, noise="symmetric:0.4", meta_per_class=5, seed=0)
    cfg = parse_train_config(
        {
            "method": "mwnet",
            "data": {"name": "digits-images", "noise": "symmetric:0.4", "meta_per_class": 5},
            "optim": {"epochs": 2, "batch_size": 64},
            "model": {"arch": "cnn2d", "width": 8},
        }
    )
    s = make_trainer(cfg, images).fit().summary
    assert np.isfinite(s["weight_auc"]) and 0.0 <= s["test_accuracy"] <= 1.0
    assert s["meta_step_time_ratio"] is not None


def test_weight_normalization_modes(task: Task) -> None:
    """batch: mean 1 over the batch; class: mean 1 within every given label, so no class loses
    its share of the step; none: as predicted. Old boolean configs keep their meaning."""
    assert config("mwnet", meta={"normalize_weights": True}).meta.normalize_weights == "batch"
    assert config("mwnet", meta={"normalize_weights": False}).meta.normalize_weights == "none"
    with pytest.raises(SlemError, match="normalize_weights"):
        config("mwnet", meta={"normalize_weights": "label"})
    w = torch.tensor([0.1, 0.3, 0.9, 0.05, 0.05, 0.6])
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    for mode in ("batch", "class", "none"):
        trainer = make_trainer(config("mwnet", meta={"normalize_weights": mode}), task)
        assert trainer.sample_weights is not None
        out = trainer.sample_weights.normalized(w, y)
        if mode == "batch":
            torch.testing.assert_close(out.mean(), torch.tensor(1.0))
        elif mode == "class":
            for c in range(3):
                torch.testing.assert_close(out[y == c].mean(), torch.tensor(1.0))
            torch.testing.assert_close(out[:2] / out[0], w[:2] / w[0])  # ratios kept in a class
        else:
            torch.testing.assert_close(out, w)


def test_auto_normalization_is_per_label_only_on_balanced_labels(task: Task) -> None:
    """The default ``auto`` keeps every label's share of the step under label noise (balanced
    observed labels) and leaves the re-weighting of an imbalanced task alone (per batch)."""
    assert config("mwnet").meta.normalize_weights == "auto"
    balanced = make_trainer(config("mwnet"), task)
    assert balanced.objective.normalization == "class"
    data = load_dataset("mnist1d", LoadOptions(size=2500))
    long_tail = make_task(data, imbalance=10, meta_per_class=10, seed=0)
    assert make_trainer(config("mwnet"), long_tail).objective.normalization == "batch"
    pinned = make_trainer(config("mwnet", meta={"normalize_weights": "batch"}), task)
    assert pinned.objective.normalization == "batch"
    w, y = torch.tensor([0.2, 0.2, 0.9, 0.1]), torch.tensor([0, 0, 1, 1])
    assert balanced.sample_weights is not None
    torch.testing.assert_close(balanced.sample_weights.normalized(w, y)[:2], torch.ones(2))


def test_dac_prior_term_penalizes_a_collapsed_model(task: Task) -> None:
    """DAC-MR alone is minimized by a constant model; ``meta.dac_prior_weight`` adds
    KL(label prior || mean prediction), zero for predictions with the prior's frequencies
    and large when one class takes everything."""
    trainer = make_trainer(
        config("mwnet", meta={"objective": "dac", "dac_prior_weight": 1.0}), task
    )
    assert isinstance(trainer, MetaTrainer)
    prior = trainer.labels.log_prior.exp()
    matching = trainer.labels.log_prior.expand(50, -1)  # every row predicts the prior
    torch.testing.assert_close(trainer.prior_gap(matching), torch.tensor(0.0), atol=1e-6, rtol=0)
    collapsed = torch.full((50, task.n_classes), -20.0)
    collapsed[:, 0] = 20.0
    assert float(trainer.prior_gap(collapsed)) > 5.0
    # the gap's gradient pushes the collapsed batch toward the other classes
    logits = collapsed.clone().requires_grad_(True)
    trainer.prior_gap(logits).backward()
    assert logits.grad is not None and float(logits.grad[:, 0].sum()) > 0
    assert float(prior.sum()) == pytest.approx(1.0)
