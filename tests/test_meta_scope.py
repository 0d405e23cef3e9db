"""``meta.scope: head``, the fast mode (issue 19): the virtual step moves only the output
layer, on features computed once.

Its hypergradient is exactly the whole-model lookahead's with every other layer frozen (the
same bilevel problem, computed on the head alone); a run with it still trains every layer;
configurations it cannot serve are refused with one line.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slem.bilevel.head import HeadSplit
from slem.data import LoadOptions, load_dataset, make_task
from slem.errors import SlemError
from slem.train import make_trainer, parse_train_config


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    data = load_dataset("mnist1d", LoadOptions(size=600))
    return make_task(data, noise="symmetric:0.4", meta_per_class=5, seed=0)


def bn_model(frozen_body: bool = False, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(40, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(32, 10),
    )
    if frozen_body:
        for p in list(model[1].parameters()) + list(model[2].parameters()):
            p.requires_grad_(False)
    return model


def config(meta: dict | None = None, method: str = "mwnet", **extra: object):  # type: ignore[no-untyped-def]
    values = {
        "method": method,
        "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 5},
        "optim": {"epochs": 2, "batch_size": 64, "lr": 0.1},
        "meta": {"warmup_epochs": 0, "hidden": 8, "batch_size": 32, **(meta or {})},
        **extra,
    }
    return parse_train_config(values)


@pytest.mark.parametrize("method", ["mwnet", "cmwnet", "cmwnet_sl"])
@pytest.mark.parametrize("objective", ["clean", "dac"])
def test_head_hypergradient_is_the_frozen_body_lookahead(task, method: str, objective: str) -> None:  # type: ignore[no-untyped-def]
    """Same state, same batch, same meta batch: the head scope's hypergradient equals the
    whole-model fast path's on a model whose body is frozen (exact, not an approximation
    of that problem)."""
    grads = {}
    for scope, frozen in (("head", False), ("model", True)):
        cfg = config({"scope": scope, "objective": objective}, method=method, seed=5)
        trainer = make_trainer(cfg, task, model=bn_model(frozen_body=frozen))
        x, y = trainer.train_x[:64], trainer.train_y[:64]
        pending = trainer.meta_hypergradient(x, y, torch.arange(64))
        grads[scope] = torch.cat([g.reshape(-1) for g in pending.result.grads.values()])
        assert pending.terms is not None  # the real step reuses phase one's forward
    assert grads["head"].norm() > 0
    torch.testing.assert_close(grads["head"], grads["model"], rtol=2e-4, atol=1e-7)


def test_head_scope_trains_every_layer_and_moves_batchnorm_once(task) -> None:  # type: ignore[no-untyped-def]
    model = bn_model(dropout=0.2)
    body = model[1].weight.detach().clone()
    trainer = make_trainer(config({"scope": "head"}), task, model=model)
    result = trainer.fit()
    assert not torch.equal(model[1].weight, body)
    assert int(model[2].num_batches_tracked) == trainer.progress.global_step > 0
    assert len(trainer.progress.timings["meta"]) == trainer.progress.global_step
    assert result.summary["test_accuracy"] is not None


def test_head_scope_on_the_builtin_cnn(task) -> None:  # type: ignore[no-untyped-def]
    cfg = config({"scope": "head"}, model={"arch": "cnn1d", "width": 8})
    result = make_trainer(cfg, task).fit()
    assert all(row["train_hypergrad_norm"] > 0 for row in result.history)
    assert result.summary["meta_step_time_ratio"] > 0


@pytest.mark.parametrize(
    ("meta", "method", "words"),
    [
        ({"scope": "head", "order": "lagged"}, "mwnet", "meta.order mwnet"),
        ({"scope": "head"}, "loss_adjuster", "remove meta.scope"),
        ({"scope": "head"}, "lr_schedule", "remove meta.scope"),
    ],
)
def test_refused_cells(meta: dict, method: str, words: str) -> None:
    with pytest.raises(SlemError, match=words):
        config(meta, method=method)


class ScaledOutput(nn.Module):
    """The output is the last layer's output times two: no head to split off."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(40, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.fc(torch.relu(self.body(x.flatten(1))))


def test_a_model_without_an_output_layer_is_refused_when_built(task) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SlemError, match=r"meta\.scope model"):
        make_trainer(config({"scope": "head"}), task, model=ScaledOutput())


def test_head_split_reproduces_the_output() -> None:
    model = bn_model()
    split = HeadSplit(model)
    x = torch.randn(16, 1, 40)
    out, features = split.run(model, x)
    params = dict(model.named_parameters())
    assert split.names(params) == ["5.weight", "5.bias"]
    torch.testing.assert_close(split.head(params, features), out)


class TiedHead(nn.Module):
    """The output layer shares its weight with an earlier layer (listed under that name)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(10, 10, bias=False)
        self.body = nn.Linear(40, 10)
        self.fc = nn.Linear(10, 10, bias=False)
        self.fc.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.embed(torch.relu(self.body(x.flatten(1))))))


def test_a_head_tied_to_another_layer_is_refused_when_built(task) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SlemError, match=r"no trainable parameters of its own"):
        make_trainer(config({"scope": "head"}), task, model=TiedHead())


def test_the_summary_gives_the_amortized_cost_of_the_fast_mode(task) -> None:  # type: ignore[no-untyped-def]
    cfg = config({"interval": 3, "order": "lagged"})
    summary = make_trainer(cfg, task, model=bn_model()).fit().summary
    r = summary["meta_step_time_ratio"]
    assert summary["amortized_step_time_ratio"] == pytest.approx((r + 2) / 3)
    values = {"method": "erm", "data": {"name": "mnist1d"}, "optim": {"epochs": 1}}
    erm = make_trainer(parse_train_config(values), task, model=bn_model()).fit().summary
    assert erm["meta_step_time_ratio"] is None and erm["amortized_step_time_ratio"] is None


def test_meta_weighting_refuses_an_order_it_cannot_take() -> None:
    from slem.train import MetaWeighting

    model = bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = (torch.randn(20, 1, 40), torch.randint(0, 10, (20,)))
    with pytest.raises(SlemError, match="drop order"):
        MetaWeighting(model, opt, meta, order="lagged")
    with pytest.raises(SlemError, match=r"meta\.scope model"):
        tied = TiedHead()
        MetaWeighting(tied, torch.optim.SGD(tied.parameters(), lr=0.1), meta, scope="head")
