"""Data-parallel training on one task (issue 17): a run on 2 gloo ranks, each with its part of
every global batch, equals the run on one process over the same global batches (float64, to
1e-6): the first meta-gradient, the model and the weighting net after several meta steps and
real steps, the histories. ERM too; BatchNorm's running statistics agree over the ranks after
an epoch; what cannot run data-parallel is refused in one line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from slem.bilevel import SGD, WeightedProblem, functional, hypergrad
from slem.data import build_task
from slem.errors import SlemError
from slem.train import (
    Callback,
    CheckpointCallback,
    TrainingStopped,
    make_trainer,
    parse_train_config,
)
from slem.train.distributed import Ranks, ranks, rows_of
from slem.train.plan import Batches
from slem.train.run import train_run

RANKS = 2
DATA = {"name": "wine", "noise": "symmetric:0.4", "meta_per_class": 5}
MODEL = {"arch": "mlp", "width": 16, "depth": 1}
#: global batches of 31 rows (parts of 16 and 15) and outer batches of odd sizes
OPTIM = {"epochs": 3, "batch_size": 31, "lr": 0.05}
SCENARIOS: dict[str, dict[str, Any]] = {
    # MW-Net on the clean meta set, SGD with momentum, the real step reusing phase one
    "mwnet": {
        "method": "mwnet",
        "meta": {"warmup_epochs": 1, "batch_size": 15, "hidden": 8},
    },
    # CMW-Net on batch-relative inputs and loss histories, Adam, the clean set (15 rows) and
    # DAC-MR (19 rows) with its batch-level prior term, per-batch normalization
    "cmwnet": {
        "method": "cmwnet",
        "optim": {**OPTIM, "optimizer": "adam", "lr": 0.01},
        "meta": {
            "warmup_epochs": 1,
            "batch_size": 19,
            "hidden": 8,
            "inputs": ["loss", "loss_ratio", "history"],
            "objective": "clean+dac",
            "dac_prior_weight": 0.5,
            "normalize_weights": "batch",
        },
    },
    # label correction (the EMA teacher), the lagged order, DAC-MR alone, central differences
    "cmwnet_sl": {
        "method": "cmwnet_sl",
        "meta": {
            "warmup_epochs": 0,
            "batch_size": 17,
            "hidden": 8,
            "objective": "dac",
            "order": "lagged",
            "jvp_mode": "difference",
        },
    },
    "erm": {"method": "erm"},
}


def config(name: str) -> Any:
    values = {"data": DATA, "model": MODEL, "optim": OPTIM, "seed": 3, **SCENARIOS[name]}
    return parse_train_config(values)


class FirstHypergradient(Callback):
    def __init__(self) -> None:
        self.grads: dict[str, Tensor] | None = None
        self.outer_loss: float | None = None

    def on_hypergradient(self, trainer: Any, result: Any) -> None:
        if self.grads is None:
            self.grads = {k: v.detach().clone() for k, v in result.grads.items()}
            self.outer_loss = result.outer_loss


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer: Any, stats: dict[str, float]) -> None:
        if trainer.progress.global_step == self.step:
            trainer.request_stop("interrupted")


def train(
    name: str, model: nn.Module | None = None, resume_at: int | None = None, run: Path = Path()
) -> dict[str, Any]:
    """Scenario ``name`` trained to its end on this process's ranks (``resume_at``: stopped
    there with a checkpoint in ``run``, and continued by a new trainer); what the test
    compares."""
    cfg = config(name)
    first = FirstHypergradient()
    if resume_at is not None:
        saver = CheckpointCallback(run / "checkpoint.pt", every=1000)
        stopped = make_trainer(cfg, build_task(cfg.data), callbacks=[saver, StopAt(resume_at)])
        stopped.use_ranks(ranks())
        with pytest.raises(TrainingStopped):
            stopped.fit(progress=False)
    trainer = make_trainer(cfg, build_task(cfg.data), model=model, callbacks=[first])
    trainer.use_ranks(ranks())
    if resume_at is not None:
        trainer.load_checkpoint(run / "checkpoint.pt")
    result = trainer.fit(progress=False)
    sw = trainer.sample_weights
    return {
        "hypergrad": first.grads,
        "outer_loss": first.outer_loss,
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "methodology": (
            {k: v.clone() for k, v in trainer.methodology.state_dict().items()}
            if trainer.methodology is not None
            else None
        ),
        "history": [{k: v for k, v in row.items() if k != "seconds"} for row in result.history],
        "observer": sw.observer.state_dict() if sw is not None else None,
        "test_accuracy": result.summary["test_accuracy"],
    }


def bn_model() -> nn.Module:
    torch.manual_seed(7 + ranks().rank)  # differs per rank: use_ranks copies rank 0's
    return nn.Sequential(nn.Linear(13, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _worker(rank: int, store: str, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=RANKS)
    try:
        results: dict[str, Any] = {name: train(name) for name in SCENARIOS}
        results["bn"] = train("erm", model=bn_model())
        results["resumed"] = train("mwnet", resume_at=5, run=Path(out))
        run_dir = Path(out) / "run"
        record, _ = train_run(config("mwnet"), run_dir, progress=False)
        results["train_run"] = {
            "summary": record.summary,
            "files": sorted(p.name for p in run_dir.iterdir()),
        }
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def on_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every scenario trained on 2 gloo ranks (spawned processes), per rank."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=RANKS, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]


@pytest.fixture(scope="module")
def alone() -> dict[str, Any]:
    """Every scenario trained on this one process over the same global batches."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return {name: train(name) for name in SCENARIOS}
    finally:
        torch.set_default_dtype(previous)


def assert_close(a: Any, b: Any, what: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{what}[{i}]")
    elif isinstance(a, Tensor):
        assert a.dtype == b.dtype, what
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), (what, (a - b).abs().max())
        else:
            assert torch.equal(a, b), what
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), what
    else:
        assert a == b, what


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_train_what_one_process_trains_on_the_global_batches(
    on_ranks: list[dict[str, Any]], alone: dict[str, Any], name: str
) -> None:
    """The first meta-gradient, then after every warm-up, meta and real step of the run: the
    model, the weighting net, the loss histories, every epoch's validation metrics and
    (mean) training losses, the test accuracy: the same on both ranks and as on one
    process."""
    one = alone[name]
    if SCENARIOS[name]["method"] != "erm":
        assert one["hypergrad"] is not None and one["observer"] is not None
    for r, result in enumerate(on_ranks):
        assert_close(one, result[name], f"{name} rank {r}")


def test_a_run_on_ranks_resumes_exactly_from_its_checkpoint(
    on_ranks: list[dict[str, Any]], alone: dict[str, Any]
) -> None:
    """Stopped after step 5 (a meta step; rank 0 writes every rank's state) and continued
    by new trainers on both ranks: the run that never stopped."""
    one = {k: v for k, v in alone["mwnet"].items() if k not in ("hypergrad", "outer_loss")}
    for r, result in enumerate(on_ranks):
        resumed = {k: v for k, v in result["resumed"].items() if k in one}
        assert_close(one, resumed, f"resumed rank {r}")


def test_batchnorm_statistics_are_averaged_over_the_ranks_each_epoch(
    on_ranks: list[dict[str, Any]],
) -> None:
    """Each rank normalizes with its own batch statistics (as under DDP); at every epoch's end
    the running statistics are averaged, so both ranks evaluate the same model (and the
    parameters, stepped by the averaged gradient, never differ)."""
    a, b = (result["bn"] for result in on_ranks)
    assert_close(a["model"], b["model"], "bn model")
    assert a["history"] == b["history"]
    assert float(a["model"]["1.running_var"].sum()) != pytest.approx(16.0)  # they moved


def test_rank_zero_writes_the_run_and_every_rank_returns_the_record(
    on_ranks: list[dict[str, Any]],
) -> None:
    zero, one = (result["train_run"] for result in on_ranks)
    for key in ("ranks", "test_accuracy", "best_val_score", "weight_auc"):
        assert one["summary"][key] == zero["summary"][key], key
    assert zero["summary"]["ranks"] == RANKS
    assert {"config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json"} <= set(zero["files"])
    assert "model.safetensors" in zero["files"]


def test_the_parts_of_a_global_batch_are_its_rows_in_rank_order() -> None:
    x, y = torch.arange(20.0)[:, None], torch.arange(20)
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    whole = Batches(x, y, order, 7, 2)
    for k in range(2):
        parts = [Batches(x, y, order, 7, 2, Ranks(r, 3))[k][2] for r in range(3)]
        assert [len(p) for p in parts] == [3, 2, 2]
        assert torch.equal(torch.cat(parts), whole[k][2])
    assert rows_of(5, Ranks(1, 2)) == slice(3, 5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "mwnet", "meta": {"hypergrad": "implicit"}}, "meta.hypergrad lookahead"),
        ({"method": "mwnet", "meta": {"hypergrad": "unrolled"}}, "not unrolled"),
        ({"method": "lr_schedule"}, "method lr_schedule cannot train data-parallel"),
        ({"method": "loss_adjuster"}, "per-sample-weight fast path (mwnet, cmwnet, cmwnet_sl)"),
        ({"method": "erm", "optim": {"batch_size": 1}}, "optim.batch_size 1 is smaller than"),
    ],
)
def test_what_cannot_train_data_parallel_is_refused_in_one_line(
    values: dict[str, Any], message: str
) -> None:
    """Refused by :meth:`Trainer.use_ranks` before any collective (so no process group is
    needed here)."""
    cfg = parse_train_config({"data": DATA, "model": MODEL, **values})
    trainer = make_trainer(cfg, build_task(cfg.data))
    with pytest.raises(SlemError, match=re.escape(message)) as info:
        trainer.use_ranks(Ranks(0, 2))
    assert "\n" not in str(info.value)
    trainer.use_ranks(Ranks())  # one rank: nothing to refuse


def test_the_generic_methods_refuse_a_problem_over_ranks() -> None:
    torch.manual_seed(0)
    model, wnet = nn.Linear(3, 2), nn.Linear(1, 1)
    f, fw = functional(model), functional(wnet)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def per_sample(params: dict[str, Tensor], batch: Any) -> Tensor:
        return nn.functional.cross_entropy(f(params, batch[0]), batch[1], reduction="none")

    def weights(hyper: dict[str, Tensor], losses: Tensor, batch: Any) -> Tensor:
        return torch.sigmoid(fw(hyper, losses[:, None])).squeeze(1)

    def outer(params: dict[str, Tensor], hyper: dict[str, Tensor], batch: Any) -> Tensor:
        return per_sample(params, batch).mean()

    def problem(reduce: Any) -> WeightedProblem:
        return WeightedProblem(
            dict(model.named_parameters()),
            dict(wnet.named_parameters()),
            per_sample,
            weights,
            outer,
            SGD(lr=0.1),
            reduce=reduce,
        )

    identity = problem(lambda t, w: t)  # one rank's reduce: the fast path is unchanged
    fast = hypergrad(identity, "lookahead", inner_batch=(x, y), outer_batch=(x, y))
    plain = hypergrad(problem(None), "lookahead", inner_batch=(x, y), outer_batch=(x, y))
    for k, g in plain.grads.items():
        assert torch.equal(g, fast.grads[k]), k
    for method, options in (("implicit", {}), ("lookahead", {"fast": False})):
        with pytest.raises(SlemError, match=r"needs meta\.hypergrad lookahead"):
            hypergrad(identity, method, inner_batch=(x, y), outer_batch=(x, y), **options)


def test_the_benchmark_cases_are_valid_configs() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = pytest.importorskip("distributed_dp")
    for case in bench.CASES.values():
        cfg = parse_train_config(case)
        assert cfg.method == "mwnet" and cfg.meta.warmup_epochs == 0
    rows = [
        {"case": "c", "setting": s, "steps_per_s": [v, v + 1], "median": v}
        for s, v in (("one", 2.0), ("two", 3.0))
    ]
    assert "| c | two | 3.00 | 3.00-4.00 | 1.50x |" in bench.table(rows)
