"""The task-conditioned inputs of weighting rules (slem.methodology.inputs): what each column
holds, the monotone option over several inputs, the noise-rate estimate, and their use in
training and meta-training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slem.data import LoadOptions, load_dataset, make_task
from slem.errors import SlemError
from slem.methodology import CMWNet, MWNet, load_methodology
from slem.methodology.inputs import TaskObserver, estimate_noise_rate
from slem.train import make_trainer, parse_train_config

ALL = ["loss", "loss_ratio", "loss_rank", "history", "progress", "noise_estimate", "log_classes"]


def test_each_column_holds_what_its_name_says() -> None:
    obs = TaskObserver(ALL, n_train=10, n_classes=4)
    losses = torch.tensor([1.0, 3.0, 2.0, 6.0])
    idx = torch.tensor([0, 1, 2, 3])
    x = obs.features(losses, idx, progress=0.25)
    assert x.shape == (4, len(ALL))
    col = {name: x[:, i] for i, name in enumerate(ALL)}
    assert torch.equal(col["loss"], losses)
    assert torch.allclose(col["loss_ratio"], losses / 3.0)
    assert torch.equal(col["loss_rank"], torch.tensor([0.0, 2 / 3, 1 / 3, 1.0]))
    assert torch.allclose(col["history"], col["loss_ratio"])  # first visit: the current ratio
    assert torch.all(col["progress"] == 0.25) and torch.all(col["noise_estimate"] == 0)
    assert torch.allclose(col["log_classes"], torch.full((4,), math.log(4)))
    obs.observe(losses, idx)  # second visit: the mean of both ratios
    later = obs.features(torch.tensor([3.0, 3.0, 3.0, 3.0]), idx)
    history = later[:, ALL.index("history")]
    assert torch.allclose(history, (losses / 3.0 + 1.0) / 2)


def test_features_are_pure_and_unseen_samples_read_their_current_ratio() -> None:
    obs = TaskObserver(["history"], n_train=3, n_classes=2)
    losses = torch.tensor([1.0, 2.0, 3.0])
    before = obs.features(losses, torch.arange(3))
    assert torch.equal(obs.features(losses, torch.arange(3)), before)
    obs.observe(torch.tensor([5.0, 1.0, 0.0]), torch.arange(3))
    assert torch.allclose(obs.features(losses, None)[:, 0], losses / 2.0)


def test_monotone_rule_is_non_increasing_in_loss_like_inputs_only() -> None:
    torch.manual_seed(0)
    for net in (
        MWNet(hidden=16, monotone=True, inputs=["loss_ratio", "history", "progress"]),
        CMWNet(n_groups=2, hidden=16, monotone=True, inputs=["loss_ratio", "history", "progress"]),
    ):
        base = torch.rand(200, 3) * 3
        for column, loss_like in ((0, True), (1, True), (2, False)):
            up = base.clone()
            up[:, column] += 0.5
            diff = (net(up) - net(base)).detach()
            if loss_like:
                assert float(diff.max()) <= 1e-7
        first = net.net[0] if isinstance(net, MWNet) else net.trunk[0]
        with torch.no_grad():  # a rule free in progress can rise with it
            first.weight[:, 2] = 5.0
        up = base.clone()
        up[:, 2] += 0.5
        assert float((net(up) - net(base)).detach().max()) > 0


def test_a_rule_with_other_inputs_refuses_bare_losses_and_saves_its_inputs(tmp_path) -> None:
    net = CMWNet(n_groups=2, hidden=4, inputs=["loss_ratio", "history"])
    with pytest.raises(ValueError, match="reads the inputs"):
        net(torch.rand(5))
    loaded, meta = load_methodology(net.save(tmp_path / "rule"))
    assert loaded.inputs == ("loss_ratio", "history")
    assert meta["input_features"] == ["loss_ratio", "history", "class_group"]
    assert "inputs" not in MWNet().config()  # loss-only artifacts read as before


def test_noise_rate_estimate_finds_the_high_loss_share() -> None:
    rng = np.random.default_rng(0)
    for rate in (0.2, 0.4):
        n = 5000
        noisy = rng.random(n) < rate
        h = np.where(noisy, rng.lognormal(1.0, 0.3, n), rng.lognormal(-1.0, 0.4, n))
        assert abs(estimate_noise_rate(h) - rate) < 0.03
    assert estimate_noise_rate(np.ones(100)) == 0.0
    assert estimate_noise_rate(np.array([1.0, 2.0])) == 0.0


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "at least one input"),
        (["loss", "loss"], "twice"),
        (["margin"], "unknown weighting input 'margin'"),
    ],
)
def test_bad_inputs_are_one_line(inputs: list[str], message: str) -> None:
    with pytest.raises(SlemError, match=message) as err:
        parse_train_config({"method": "cmwnet", "meta": {"inputs": inputs}})
    assert "\n" not in str(err.value)


def test_history_inputs_need_the_real_steps_losses() -> None:
    with pytest.raises(SlemError, match="use order mwnet"):
        parse_train_config({"method": "mwnet", "meta": {"inputs": ["history"], "order": "lagged"}})


def test_a_task_conditioned_rule_meta_trains_and_its_observer_follows_the_run() -> None:
    data = load_dataset("mnist1d", LoadOptions(size=1500))
    task = make_task(data, noise="symmetric:0.4", meta_per_class=10, seed=0)
    cfg = parse_train_config(
        {
            "method": "cmwnet",
            "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 10},
            "optim": {"epochs": 3, "batch_size": 64},
            "model": {"width": 16},
            "meta": {"inputs": ["loss_ratio", "history", "progress", "noise_estimate"]},
        }
    )
    trainer = make_trainer(cfg, task)
    result = trainer.fit(progress=False)
    sw = trainer.sample_weights
    assert sw is not None
    steps = trainer.plan.steps_per_epoch
    assert int(sw.observer.visits.sum()) == 3 * steps * trainer.plan.batch_size
    assert 0.05 < sw.observer.noise < 0.95  # estimated from the histories after epoch 1
    assert result.summary["weight_auc"] > 0.6
