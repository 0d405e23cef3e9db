"""Loss setting and model adjustment for classification: the loss adjuster, the transition
network, forward correction, bundles meta-learned jointly, DAC-MR for all of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from slem.bilevel import functional
from slem.data import LoadOptions, load_dataset, make_task
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology import (
    LossAdjusterNet,
    MethodologyBundle,
    MLRSNet,
    MWNet,
    TransitionNet,
    adjusted_loss,
    load_methodology,
)
from slem.train import CheckpointCallback, TrainingStopped, make_trainer
from slem.train import losses as L
from slem.train.bundle import BundleTrainer, logit_margin
from slem.train.forward import ForwardTrainer, corrected_nll, estimate_transition
from tests.test_train import StopAt, config


@pytest.fixture(scope="module")
def task() -> Task:
    data = load_dataset("mnist1d", LoadOptions(size=2500))
    return make_task(data, noise="symmetric:0.4", meta_per_class=10, seed=0)


# ---------------------------------------------------------------------- methodologies


def test_adjuster_starts_at_the_hand_set_losses_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    margin, loss = torch.randn(50) * 3, torch.rand(50) * 4
    groups = torch.randint(0, 3, (50,))
    gce = LossAdjusterNet("gce", n_groups=3)
    q = gce(margin, loss, groups)
    assert q.shape == (50, 1) and torch.allclose(q, torch.full_like(q, 0.7), atol=0.03)
    sce = LossAdjusterNet("sce", n_groups=3)
    ab = sce(margin, loss, groups)
    assert torch.allclose(ab[:, 0], torch.full((50,), 0.1), atol=0.03)
    assert torch.allclose(ab[:, 1], torch.ones(50), atol=0.05)
    # the per-sample losses equal the hand-set baselines at the same hyperparameters
    logits, y = torch.randn(50, 10), torch.randint(0, 10, (50,))
    probs = F.softmax(logits, 1)
    assert torch.allclose(
        adjusted_loss(probs, y, "gce", torch.full((50, 1), 0.7)), L.gce(logits, y, 0.7), atol=1e-5
    )
    hp = torch.tensor([[0.1, 1.0]]).expand(50, 2)
    assert torch.allclose(adjusted_loss(probs, y, "sce", hp), L.sce(logits, y, 0.1, 1.0), atol=1e-4)
    with torch.no_grad():
        sce.head_weight.normal_()
    sce.save(tmp_path / "adj")
    loaded, info = load_methodology(tmp_path / "adj")
    assert info["kind"] == "loss_adjuster" and info["config"]["family"] == "sce"
    assert torch.equal(loaded(margin, loss, groups), sce(margin, loss, groups))
    with pytest.raises(SlemError, match="loss family 'js' is unknown"):
        LossAdjusterNet("js")  # type: ignore[arg-type]


def test_transition_net_rows_are_distributions_and_check_the_task() -> None:
    net = TransitionNet(n_inputs=40, n_classes=10, init_diagonal=0.8)
    t = net(torch.randn(7, 1, 40))
    assert t.shape == (7, 10, 10)
    assert torch.allclose(t.sum(2), torch.ones(7, 10), atol=1e-6)
    assert torch.allclose(torch.diagonal(t, dim1=1, dim2=2), torch.full((7, 10), 0.8), atol=0.02)
    with pytest.raises(SlemError, match="predicts 10x10 matrices but the data has 3 classes"):
        net.check_task(40, 3)
    with pytest.raises(SlemError, match="reads 40 input features but the data has 13"):
        net.check_task(13, 10)


def test_bundle_round_trips_every_part(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bundle = MethodologyBundle.of(MWNet(hidden=8), LossAdjusterNet("gce", 2, 8), MLRSNet(8, 2))
    assert set(bundle.parts) == {"weighting", "loss", "schedule"}
    assert "loss" in bundle.observed_inputs() and "logit_margin" in bundle.observed_inputs()
    bundle.save(tmp_path / "b", meta_trained_on={"dataset": "x"})
    loaded, info = load_methodology(tmp_path / "b")
    assert isinstance(loaded, MethodologyBundle) and info["kind"] == "bundle"
    for (n1, p1), (n2, p2) in zip(
        bundle.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)
    with pytest.raises(SlemError, match="one methodology per role"):
        MethodologyBundle.of(MWNet(), MWNet())
    with pytest.raises(SlemError, match="has kind 'nope'"):
        MethodologyBundle({"weighting": {"kind": "nope"}})


def test_forward_correction_pieces() -> None:
    truth = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.05, 0.7]])
    rng = torch.Generator().manual_seed(0)
    vague = F.softmax(torch.randn(300, 3, generator=rng) * 0.3, 1)  # p_i < 0.7 everywhere
    probs = torch.cat([vague, truth.repeat(5, 1)])
    assert torch.allclose(estimate_transition(probs, 1.0), truth, atol=1e-6)
    logits, y = torch.randn(20, 3), torch.randint(0, 3, (20,))
    assert torch.allclose(corrected_nll(logits, y, torch.eye(3)), L.cross_entropy(logits, y))
    margin = logit_margin(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([2]))
    assert torch.allclose(margin, torch.tensor([-1.0]))


# ---------------------------------------------------------------------- hypergradient


def test_joint_hypergradient_is_the_exact_one_step_gradient(task: Task) -> None:
    """The bundle's meta step differentiates L_meta(w - lr(theta_s) g(theta_w, theta_a,
    theta_t)) with respect to every part at once: compare with autograd through the step."""
    torch.manual_seed(0)
    cfg = config(
        "joint",
        joint={"components": ["mwnet", "loss_adjuster", "transition", "lr_schedule"]},
        optim={"momentum": 0.0, "weight_decay": 0.0},
        meta={"normalize_weights": False},
    )
    trainer = make_trainer(cfg, task)
    assert isinstance(trainer, BundleTrainer) and trainer.rate is not None
    trainer.rate.rescale(2.3)
    x, y = trainer.train_x[:32], trainer.train_y[:32]
    mx, my = trainer.meta_x[:20], trainer.meta_y[:20]
    trainer.model.train()  # as in the meta step: BatchNorm on batch statistics
    problem, inner_batch, _ = trainer.meta_problem(x, y)
    hyper = problem.hyper  # every part's parameters but the schedule's frozen snapshots
    params = dict(trainer.model.named_parameters())
    f = functional(trainer.model)

    # reference: autograd through one SGD step
    ce = F.cross_entropy(f(params, x), y).detach()
    rate = trainer.rate.differentiable(ce)
    inner = problem.inner_loss(params, hyper, inner_batch)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    stepped = {n: p - rate * g for (n, p), g in zip(params.items(), grads, strict=True)}
    meta_loss = F.cross_entropy(f(stepped, mx), my)
    reference = torch.autograd.grad(meta_loss, list(hyper.values()), allow_unused=True)

    trainer.meta_x, trainer.meta_y = mx, my  # the meta step draws its batch from these
    trainer.config.meta.batch_size = 20
    captured: dict[str, torch.Tensor] = {}
    original = trainer.meta_optimizer.step

    def capture() -> None:
        captured.update({n: p.grad.clone() for n, p in hyper.items() if p.grad is not None})

    trainer.meta_optimizer.step = capture  # type: ignore[method-assign]
    trainer.meta_train_step(x, y)
    trainer.meta_optimizer.step = original  # type: ignore[method-assign]
    checked = 0
    for (name, _), ref in zip(hyper.items(), reference, strict=True):
        if ref is None:
            continue
        torch.testing.assert_close(captured[name], ref, rtol=1e-3, atol=1e-6)
        checked += 1
    roles = {n.split(".")[1] for n in captured}
    assert roles == {"weighting", "loss", "transition", "schedule"} and checked == len(captured)


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "sections",
    [
        {"method": "loss_adjuster", "adjuster": {"family": "sce"}},
        {"method": "transition"},
        {"method": "joint", "meta": {"interval": 2}},
    ],
)
def test_bundle_methods_run(task: Task, sections: dict[str, Any]) -> None:
    method = sections.pop("method")
    trainer = make_trainer(config(method, **sections), task)
    assert isinstance(trainer, BundleTrainer)
    result = trainer.fit()
    s = result.summary
    assert 0.0 <= s["test_accuracy"] <= 1.0 and s["meta_step_time_ratio"] is not None
    if method == "transition":
        assert 0.0 <= s["transition_error"] <= 1.0
    if method == "joint":
        assert s["components"] == ["weighting", "loss", "schedule"]
        assert s["weight_auc"] is not None and s["lr_last"] > 0


def test_forward_baselines(task: Task) -> None:
    anchor = make_trainer(config("forward", epochs=3, loss={"forward_warmup_epochs": 2}), task)
    assert isinstance(anchor, ForwardTrainer)
    s = anchor.fit().summary
    assert anchor.transition is not None and 0.0 <= s["transition_error"] <= 1.0
    oracle = make_trainer(config("forward", loss={"forward_transition": "true"}), task)
    assert oracle.correcting and oracle.fit().summary["transition_error"] < 1e-6
    data = load_dataset("mnist1d", LoadOptions(size=1500))
    inst = make_task(data, noise="instance:0.4", seed=0)
    assert inst.transition_rows is not None and inst.transition_rows.shape == (len(inst.train), 10)
    averaged = make_trainer(config("forward", loss={"forward_transition": "true"}), inst)
    assert averaged.transition is not None
    assert np.allclose(averaged.transition.numpy(), inst.transition, atol=1e-6)
    with pytest.raises(SlemError, match="forward_warmup_epochs"):
        make_trainer(config("forward", epochs=2, loss={"forward_warmup_epochs": 2}), task)


def test_dac_mr_teaches_the_loss_adjuster_without_clean_data() -> None:
    """No clean sample anywhere: DAC-MR alone makes the adjuster give the noisy samples a
    more robust loss (larger GCE q) than the clean ones, which the untrained net does not."""
    data = load_dataset("mnist1d", LoadOptions(size=2500))
    no_meta = make_task(data, noise="symmetric:0.4", seed=0)
    assert no_meta.meta is None
    cfg = config(
        "loss_adjuster", epochs=4, meta={"objective": "dac"}, data={"meta_per_class": None}
    )
    trainer = make_trainer(cfg, no_meta)
    assert isinstance(trainer, BundleTrainer)
    noisy = no_meta.train.noisy_mask

    def gap_and_auc() -> tuple[float, float]:
        q = trainer.adjuster_values()[:, 0]
        return float(q[noisy].mean() - q[~noisy].mean()), float(roc_auc_score(noisy, q))

    before, _ = gap_and_auc()
    trainer.fit()
    after, auc = gap_and_auc()
    assert abs(before) < 0.01
    assert after > 0.02 and auc > 0.65  # chance: gap 0, AUC 0.5


def test_bundle_resumes_exactly(task: Task, tmp_path: Path) -> None:
    cfg = config("joint", epochs=3)
    full = make_trainer(cfg, task).fit()
    ckpt = tmp_path / "checkpoint.pt"
    first = make_trainer(cfg, task, callbacks=[CheckpointCallback(ckpt), StopAt(50)])
    with pytest.raises(TrainingStopped):
        first.fit()
    second = make_trainer(cfg, task)
    second.load_checkpoint(ckpt)
    resumed = second.fit()
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]
    assert resumed.summary["lr_last"] == full.summary["lr_last"]


def test_bad_inputs(task: Task, tmp_path: Path) -> None:
    with pytest.raises(SlemError, match=r"joint\.components"):
        config("joint", joint={"components": ["cmwnet_sl"]})
    with pytest.raises(SlemError, match="use mwnet or cmwnet, not both"):
        config("joint", joint={"components": ["mwnet", "cmwnet"]})
    reg = make_task(load_dataset("diabetes"), meta_size=20)
    with pytest.raises(SlemError, match="needs class labels, but 'diabetes' is a regression task"):
        make_trainer(config("loss_adjuster"), reg)
    # a transition net meta-learned for 10 classes, applied to 3-class data
    TransitionNet(n_inputs=13, n_classes=10).save(tmp_path / "t10")
    wine = make_task(load_dataset("wine"))
    frozen, _ = load_methodology(tmp_path / "t10")
    with pytest.raises(SlemError, match="predicts 10x10 matrices but the data has 3 classes"):
        make_trainer(config("apply", methodology=str(tmp_path / "t10")), wine, methodology=frozen)
    assert np.isfinite(task.train.X).all()


def test_cli_joint_bundle_train_then_apply(runner: Any, tmp_path: Path) -> None:
    from slem.cli.app import app
    from tests.test_cli_train import EXAMPLES, SMALL

    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(EXAMPLES / "joint_mnist1d.yaml"), "--out", str(run), *SMALL]
    )
    assert result.exit_code == 0, result.stderr
    info = json.loads((run / "methodology/methodology.json").read_text())
    assert info["kind"] == "bundle"
    assert set(info["config"]["parts"]) == {"weighting", "loss", "schedule"}
    for name in ("adjuster_vs_margin.png", "lr_schedule.png", "weight_vs_loss.png"):
        assert (run / "plots" / name).is_file(), name
    applied = tmp_path / "applied"
    result = runner.invoke(
        app,
        [
            "apply",
            str(run / "methodology"),
            "--data",
            "mnist1d",
            "--noise",
            "pairflip:0.4",
            "--epochs",
            "2",
            "--out",
            str(applied),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((applied / "summary.json").read_text())
    assert summary["method"] == "apply" and summary["n_meta"] == 0
    assert summary["components"] == ["weighting", "loss", "schedule"]

    transition = tmp_path / "transition"
    result = runner.invoke(
        app,
        ["train", str(EXAMPLES / "transition_mnist1d.yaml"), "--out", str(transition), *SMALL],
    )
    assert result.exit_code == 0, result.stderr
    assert (transition / "plots/transition.png").is_file()
    assert json.loads((transition / "summary.json").read_text())["transition_error"] < 1.0
