"""The validity table (issue 14, kind 2): every invalid cell is refused before training with
one line, every valid cell learns (finite, non-zero hypergradient), and the cells refused for
mathematical reasons really give an exactly zero hypergradient when forced."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from slem.data import LoadOptions, load_dataset, make_task
from slem.errors import SlemError
from slem.train import Callback, make_trainer, parse_train_config
from slem.train import validity as V
from slem.train.config import TrainConfig
from slem.train.guard import ZeroHypergradient
from slem.train.methods import get_method

ROOT = Path(__file__).resolve().parents[1]


def values(cell: V.Cell) -> dict[str, Any]:
    regression = cell.task_type == "regression"
    data: dict[str, Any] = (
        {"name": "diabetes", "noise": "mixture:0.3", "meta_size": 20}
        if regression
        else {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 5}
    )
    meta: dict[str, Any] = {
        "hypergrad": cell.hypergrad,
        "virtual_step": cell.virtual_step,
        "objective": cell.objective,
        "order": cell.order,
        "jvp_mode": cell.jvp_mode,
        "scope": cell.scope,
        "warmup_epochs": 0,
        "hidden": 4,
        "batch_size": 16,
    }
    out: dict[str, Any] = {
        "method": cell.method,
        "data": data,
        "optim": {"optimizer": cell.optimizer, "epochs": 1, "batch_size": 64},
        "meta": meta,
        "model": {"width": 4},
    }
    if cell.method in V.OWN_METHODS:  # leave what such a method does not read at its default
        for name, default in V.META_DEFAULTS.items():
            if getattr(cell, name) == default:
                del meta[name]
    if "meta" not in get_method(cell.method).sections:  # a section it does not read at all:
        for name in list(meta):  # only the options the table refuses (else a section error)
            if name not in V.META_DEFAULTS:
                del meta[name]
        if not meta:
            del out["meta"]
    if cell.method == "joint":
        out["joint"] = {"components": list(cell.components)}
    return out


def test_every_cell_is_accepted_exactly_when_valid() -> None:
    """The config refuses exactly the invalid cells of its task type, with the table's
    reason as the one-line message."""
    checked = 0
    for cell in V.cells():
        if (cell.task_type == "regression") != (cell.method in V.REGRESSION):
            continue  # task-type cells: see test_task_type_is_checked
        why = V.reason(cell)
        if why is None:
            parse_train_config(values(cell))
        else:
            with pytest.raises(SlemError) as err:
                parse_train_config(values(cell))
            assert why in str(err.value)
            assert "\n" not in str(err.value)
        checked += 1
    assert checked > 1000


def test_order_and_jvp_mode_outside_the_fast_path_are_refused() -> None:
    for field, value in (("order", "lagged"), ("jvp_mode", "difference")):
        for method, hg in (("mwnet", "unrolled"), ("loss_adjuster", "lookahead")):
            cell = V.Cell(method, hypergrad=hg, **{field: value})  # type: ignore[arg-type]
            with pytest.raises(SlemError, match=f"meta.{field} {value}"):
                parse_train_config(values(cell))
        parse_train_config(values(V.Cell("cmwnet", **{field: value})))  # type: ignore[arg-type]


def test_task_type_is_checked() -> None:
    reg = make_task(load_dataset("diabetes"), meta_size=20, seed=0)
    cfg = parse_train_config(values(V.Cell("mwnet")))
    with pytest.raises(SlemError, match="needs class labels"):
        make_trainer(cfg, reg)
    wine = make_task(load_dataset("wine"), seed=0)
    cfg = parse_train_config(values(V.Cell("hwnet", task_type="regression")))
    with pytest.raises(SlemError, match="is for regression targets"):
        make_trainer(cfg, wine)


def test_docs_page_is_generated_from_the_table() -> None:
    page = (ROOT / "docs" / "validity.md").read_text()
    assert V.markdown() in page


@pytest.fixture(scope="module")
def classification():  # type: ignore[no-untyped-def]
    data = load_dataset("mnist1d", LoadOptions(size=500))
    return make_task(data, noise="symmetric:0.4", meta_per_class=5, seed=0)


@pytest.fixture(scope="module")
def regression():  # type: ignore[no-untyped-def]
    return make_task(load_dataset("diabetes"), noise="mixture:0.3", meta_size=20, seed=0)


class Norms(Callback):
    def __init__(self) -> None:
        self.norms: dict[str, list[float]] = {}

    def on_hypergradient(self, trainer, result) -> None:  # type: ignore[no-untyped-def]
        for name, g in result.grads.items():
            self.norms.setdefault(name.split(".")[0], []).append(float(g.norm()))


def run(cell: V.Cell, task) -> Norms:  # type: ignore[no-untyped-def]
    probe = Norms()
    cfg = parse_train_config(values(cell))
    make_trainer(cfg, task, callbacks=[probe]).fit()
    return probe


def covering_cells() -> list[V.Cell]:
    """Every valid (method, hypergrad), (method, optimizer, virtual_step) and
    (method, objective) pair, the other settings at their defaults."""
    out: list[V.Cell] = []
    for cell in V.cells():
        truncated = cell.method in V.OWN_METHODS and cell.method != "lr_schedule"
        if V.reason(cell) is not None or truncated:  # the learned optimizer: its own unroll
            continue
        default_tt = "regression" if cell.method in V.REGRESSION else "classification"
        base = V.Cell(
            cell.method,
            task_type=default_tt,
            components=cell.components,
            hypergrad="lookahead",
            objective="clean",
        )
        for variant in (
            V.Cell(**{**base.__dict__, "hypergrad": cell.hypergrad}),
            V.Cell(
                **{**base.__dict__, "optimizer": cell.optimizer, "virtual_step": cell.virtual_step}
            ),
            V.Cell(**{**base.__dict__, "objective": cell.objective}),
        ):
            if V.reason(variant) is None and variant not in out:
                out.append(variant)
    return out


@pytest.mark.parametrize(
    "cell",
    covering_cells(),
    ids=lambda c: "-".join(
        str(v)
        for v in (c.method, *c.components, c.hypergrad, c.optimizer, c.virtual_step, c.objective)
    ),
)
def test_valid_cells_learn(cell: V.Cell, classification, regression) -> None:  # type: ignore[no-untyped-def]
    task = regression if cell.task_type == "regression" else classification
    try:
        probe = run(cell, task)
    except SlemError as exc:  # rule 8: thousands of hyperparameters, refused before training
        assert cell.hypergrad == "forward" and cell.method in ("transition", "joint", "lr_schedule")
        assert "meta.hypergrad forward needs one pass" in str(exc)
        return
    assert probe.norms, "no meta step ran"
    for part, norms in probe.norms.items():
        assert all(n == n and n != float("inf") for n in norms), part
        assert max(norms) > 0, f"{part} got an exactly zero hypergradient"


def forced(cell: V.Cell) -> TrainConfig:
    """The config of an invalid cell, built without validation."""
    valid = parse_train_config(
        values(V.Cell(cell.method, components=cell.components, task_type=cell.task_type))
    )
    meta = valid.meta.model_copy(update={"hypergrad": cell.hypergrad})
    return valid.model_copy(update={"meta": meta})


@pytest.mark.parametrize(
    "method", ["mwnet", "cmwnet", "cmwnet_sl", "loss_adjuster", "transition", "hwnet"]
)
def test_first_order_really_learns_nothing_and_the_run_stops(
    method: str, classification, regression
) -> None:  # type: ignore[no-untyped-def]
    tt = "regression" if method == "hwnet" else "classification"
    cell = V.Cell(method, hypergrad="first_order", task_type=tt)
    assert V.reason(cell) is not None
    probe = Norms()
    task = regression if tt == "regression" else classification
    trainer = make_trainer(forced(cell), task, callbacks=[probe])
    with pytest.raises(ZeroHypergradient, match="exactly 0 in all"):
        trainer.fit()
    assert probe.norms and all(max(n) == 0.0 for n in probe.norms.values())


def test_implicit_schedule_gradient_is_zero(classification) -> None:  # type: ignore[no-untyped-def]
    """Per parameter: the schedule net's hypergradient under implicit is exactly 0."""
    cell = V.Cell("joint", hypergrad="implicit", components=("mwnet", "lr_schedule"))
    seen: dict[str, float] = {}

    class Per(Callback):
        def on_hypergradient(self, trainer, result) -> None:  # type: ignore[no-untyped-def]
            for name, g in result.grads.items():
                seen[name] = max(seen.get(name, 0.0), float(g.abs().max()))

    make_trainer(forced(cell), classification, callbacks=[Per()]).fit()
    sched = {k: v for k, v in seen.items() if "schedule" in k}
    other = {k: v for k, v in seen.items() if "schedule" not in k}
    assert sched and all(v == 0.0 for v in sched.values())
    assert max(other.values()) > 0


def test_table_lists_every_combination() -> None:
    rows = V.table()
    dims = (V.HYPERGRADS, V.OPTIMIZERS, V.VIRTUAL_STEPS, V.OBJECTIVES, V.TASK_TYPES)
    per_method = len(list(itertools.product(*dims)))
    assert len(rows) % per_method == 0
    assert any(r["valid"] for r in rows) and any(not r["valid"] for r in rows)
    assert torch.tensor([r["valid"] for r in rows]).sum() < len(rows)


def test_constructing_a_config_in_python_refuses_like_yaml() -> None:
    """``TrainConfig(...)`` resolves presets and refuses an invalid cell with the same
    one-line SlemError as ``parse_train_config`` and ``slem train``."""
    with pytest.raises(SlemError, match="first_order cannot learn method mwnet") as err:
        TrainConfig(method="mwnet", meta={"hypergrad": "first_order"})
    assert "\n" not in str(err.value)
    cfg = TrainConfig(preset="mwnet-noise", optim={"epochs": 3})
    assert cfg.method == "mwnet" and cfg.meta.virtual_step == "sgd" and cfg.optim.epochs == 3
