"""The fast mode of the sample-weighting meta step against the exact one: the amortized meta
step (``meta.interval``: the exact meta step every k-th training step; the project's fast
mode), its accuracy and the staleness of its hypergradient along a run; and, second, the
layer-subset approximation ``meta.scope: head`` (measured, and not the fast mode): its
hypergradient's bias along a run and its accuracy.

    python benchmarks/fast_mode.py [--quick] [--json PATH] [--cache DIR] [--seeds 3]
        [--jobs 2] [--parts staleness,accuracy,head-bias,diagnose] [--no-fashion]
        [--fashion-seeds 3] [--variants exact,interval 5, lagged,...]

All runs use the noisy-label grid's configuration (``noisy_labels.run_config``: MW-Net,
40% symmetric noise; MNIST-1D 30 epochs, Fashion-MNIST 20 epochs).

1. ``staleness``: MW-Net with ``meta.interval: 5, meta.order: lagged`` (the recommended fast
   mode) on MNIST-1D, seed 0. At every training step after the warm-up the exact
   hypergradient is computed functionally, before the step, on the current state and
   training batch, with a meta batch: on a meta step the one the step draws (drawn and put
   back), between meta steps a fresh one from a generator of its own (as an exact run draws
   one at every step); the run is the plain run. Its meta steps (one step in five) compute
   that very hypergradient themselves (in the lagged order their virtual step is the real
   step); in between, the weighting net keeps the update of the last one. Per epoch and per
   lag (steps since the last meta step): cosine and relative error ``|g_applied - g_exact| /
   |g_exact|`` between the hypergradient the fast mode last applied and the exact one at the
   current step; for reference the same between the exact hypergradients of consecutive
   steps (the minibatch noise of an exact run); the share of steps that are meta steps; and
   at the meta steps the run's own hypergradient against the functional one (a check: they
   are one computation). The run's per-epoch weights and final accuracy are checked equal to
   the plain (cached) run's.
2. ``accuracy``: MNIST-1D, ``--seeds`` seeds: MW-Net exact, the amortized modes (``interval
   5, lagged`` and ``interval 7`` in the default mwnet order), the ``meta.scope: head``
   variants (``head``, with a meta step every 2 steps, without the meta optimizer's weight
   decay, monotone) and ERM: final test accuracy and test accuracy at the best-validation
   epoch, mean ± std, the per-seed paired difference to exact, issue 19's bound (within 0.3
   points of exact, mean over the seeds) per variant, and per epoch the learned weights' mean
   on truly noisy over truly clean samples. On Fashion-MNIST (``--fashion-seeds`` seeds):
   exact, ``interval 5, lagged`` and ERM, and the head variants on seed 0. ``--jobs N``
   runs N trainings at once, one thread each (the staleness run among them); finished runs
   are kept in ``CACHE/runs.jsonl`` (resumable).
3. ``head-bias``: MW-Net trained with ``meta.scope: head`` (MNIST-1D, and Fashion-MNIST when
   installed, seed 0). At every meta step, on the same state, training batch and meta batch
   (drawn once from the trainer's generator), the exact whole-model hypergradient is
   computed too, before the real step (functionally: BatchNorm statistics move once per
   step, in the real step); the run is the plain head run. Per epoch: median and minimum
   cosine ``cos(g_head, g_exact)``, median and maximum relative error, median norm ratio
   ``|g_head| / |g_exact|``, both norms and the norm of the meta optimizer's weight decay.
4. ``diagnose`` (not in the default parts): exact, head and head without the meta weight
   decay on MNIST-1D seed 0, probed after every epoch (test accuracy, memorization, the
   learned rule at a few losses, its norm).

``--quick``: MNIST-1D only, 2 epochs (the warm-up and one meta epoch) of staleness and
head bias, a few accuracy variants for 2 epochs on one seed (about 2 minutes); its JSON and
cache go to a temporary directory unless ``--json`` / ``--cache`` are given. Parts not run
keep their entries of an existing JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slem.bilevel import hypergrad
from slem.data import build_task
from slem.data.sources.fashion_mnist import find_dir
from slem.train import make_trainer
from slem.train.callbacks import Callback
from slem.train.config import TrainConfig
from slem.train.meta_step import hypergrad_options
from slem.train.meta_trainer import MetaTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Cache, base_parser
from noisy_labels import DATASETS, run_config

RESULTS = Path(__file__).resolve().parent / "results"
#: accuracy variants: name -> (grid method, extra ``meta`` settings)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "exact": ("MW-Net", {}),
    # the fast mode: the exact meta step every k-th training step (amortized)
    "interval 5, lagged": ("MW-Net", {"interval": 5, "order": "lagged"}),
    "interval 7": ("MW-Net", {"interval": 7}),
    # the layer-subset approximation (meta.scope head): measured, not the fast mode
    "head": ("MW-Net", {"scope": "head"}),
    "head + interval 2": ("MW-Net", {"scope": "head", "interval": 2}),
    # the head's hypergradient is 6-300x smaller than the whole model's, below the meta
    # optimizer's (coupled, Adam) weight decay term: the head mode without it
    "head + meta wd 0": ("MW-Net", {"scope": "head", "weight_decay": 0.0}),
    # the control: what the same change does to the exact mode
    "exact + meta wd 0": ("MW-Net", {"weight_decay": 0.0}),
    # without weight decay the head mode learns a non-monotone rule (a bump at medium losses):
    # the rule constrained non-increasing in the loss (meta.monotone)
    "head + monotone": ("MW-Net", {"scope": "head", "monotone": True}),
    "head + monotone + meta wd 0": (
        "MW-Net",
        {"scope": "head", "monotone": True, "weight_decay": 0.0},
    ),
    "ERM": ("ERM", {}),
}
#: the fast (amortized) variants, and the layer-subset ones
INTERVAL_VARIANTS = ("interval 5, lagged", "interval 7")
HEAD_VARIANTS = tuple(v for v in VARIANTS if v.startswith("head") or v == "exact + meta wd 0")
#: the variants run on Fashion-MNIST for ``--fashion-seeds`` seeds, and for seed 0 only
FASHION_VARIANTS = ("exact", "interval 5, lagged", "ERM")
FASHION_SEED0_VARIANTS = ("head", "head + meta wd 0", "head + monotone + meta wd 0")
#: ``--quick``'s accuracy variants
QUICK_VARIANTS = ("exact", "interval 5, lagged", "interval 7", "head", "ERM")
#: the variants compared with exact seed by seed
PAIRED = tuple(v for v in VARIANTS if v not in ("exact", "ERM"))
#: issue 19's bound: the fast mode within this many points (as a fraction) of exact
BOUND = 0.003
#: the fast mode whose hypergradient's staleness is measured
STALENESS_META = {"interval": 5, "order": "lagged"}
#: the parts of the benchmark, and those run by default
PARTS = ("staleness", "accuracy", "head-bias", "diagnose")
DEFAULT_PARTS = ("staleness", "accuracy", "head-bias")


def with_meta(cfg: TrainConfig, **meta: Any) -> TrainConfig:
    """``cfg`` with ``meta`` settings replaced."""
    return cfg.model_copy(update={"meta": cfg.meta.model_copy(update=meta)})


def variant_config(variant: str, seed: int, epochs: int, dataset: str = "mnist1d") -> TrainConfig:
    """The grid's configuration (``noisy_labels.run_config``, 40% symmetric noise) of one
    accuracy variant."""
    method, meta = VARIANTS[variant]
    cfg = run_config(dataset, "sym40", method, seed, epochs)
    return with_meta(cfg, **meta) if meta else cfg


# ---------------------------------------------------------------------------------- bias


class _Stop(Exception):
    """Ends an instrumented run after its step budget."""


def exact_hypergradient(trainer: MetaTrainer, x: torch.Tensor, y: torch.Tensor, idx: Any) -> Any:
    """The whole-model (``meta.scope: model``) hypergradient of the meta step the trainer is
    about to take, at its current state: the same problem with the head split switched off,
    computed functionally (no BatchNorm statistics move, nothing is recorded; the outer batch
    is whatever ``trainer._outer_batch`` returns)."""
    step = trainer.meta_step
    assert step is not None
    head, net = trainer._head, trainer._net
    trainer._head, trainer._net = None, trainer._f_model
    try:
        trainer.model.train()
        problem, inner, outer = trainer.meta_problem(x, y, idx)
        options = hypergrad_options(
            step.method, step.optimizer, jvp_mode=step.meta.jvp_mode, live_forward=False
        )
        return hypergrad(problem, step.method, inner_batch=inner, outer_batch=outer, **options)
    finally:
        trainer._head, trainer._net = head, net


def compare(fast: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Cosine, relative error and norm ratio of two flat hypergradients (float64), and their
    norms."""
    a, b = fast.double(), exact.double()
    norm = float(b.norm())
    return {
        "cosine": float(F.cosine_similarity(a, b, dim=0)),
        "rel_error": float((a - b).norm()) / max(norm, 1e-300),
        "norm_ratio": float(a.norm()) / max(norm, 1e-300),
        "norm_fast": float(a.norm()),
        "norm_exact": norm,
    }


def instrument(trainer: MetaTrainer, max_steps: int | None = None) -> list[dict[str, float]]:
    """Make every meta step of ``trainer`` also compute the exact hypergradient on the same
    state, training batch and meta batch, before its own (fast) one; returns the list the
    comparisons are appended to (``epoch``, ``step``, :func:`compare`'s numbers). The meta
    batch is drawn once from the trainer's generator, as in an uninstrumented run, so the run
    is the plain run. After ``max_steps`` meta steps, :class:`_Stop` is raised."""
    records: list[dict[str, float]] = []
    phase_one = trainer.meta_hypergradient
    draw = trainer._outer_batch
    step_hyper = trainer.meta_hyper()

    def meta_hypergradient(x: torch.Tensor, y: torch.Tensor, idx: Any = None) -> Any:
        if max_steps is not None and len(records) >= max_steps:
            raise _Stop
        outer = draw()
        trainer._outer_batch = lambda: outer  # type: ignore[method-assign]
        try:
            exact = exact_hypergradient(trainer, x, y, idx)
            pending = phase_one(x, y, idx)
        finally:
            trainer._outer_batch = draw  # type: ignore[method-assign]
        row = compare(pending.result.flat(), exact.flat())
        # the meta optimizer's (coupled) weight decay term, beside the hypergradients' norms
        decay = trainer.config.meta.weight_decay * math.sqrt(
            sum(float((p.detach().double() ** 2).sum()) for p in step_hyper.values())
        )
        records.append(
            {"epoch": trainer.progress.epoch + 1, "step": len(records), **row, "decay": decay}
        )
        return pending

    trainer.meta_hypergradient = meta_hypergradient  # type: ignore[method-assign]
    return records


def per_epoch(records: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Per epoch: the medians and extremes of the comparisons."""
    rows = []
    for epoch in sorted({int(r["epoch"]) for r in records}):
        rs = [r for r in records if r["epoch"] == epoch]
        cos = [r["cosine"] for r in rs]
        err = [r["rel_error"] for r in rs]
        rows.append(
            {
                "epoch": epoch,
                "meta_steps": len(rs),
                "cosine_median": statistics.median(cos),
                "cosine_min": min(cos),
                "rel_error_median": statistics.median(err),
                "rel_error_max": max(err),
                "norm_ratio_median": statistics.median(r["norm_ratio"] for r in rs),
                "norm_fast_median": statistics.median(r["norm_fast"] for r in rs),
                "norm_exact_median": statistics.median(r["norm_exact"] for r in rs),
                "decay_median": statistics.median(r["decay"] for r in rs),
            }
        )
    return rows


def bias_run(
    cfg: TrainConfig,
    max_steps: int | None = None,
    model: nn.Module | None = None,
    task: Any = None,
) -> dict[str, Any]:
    """Train ``cfg`` (its ``meta.scope`` set to head) with every meta step compared to the exact
    hypergradient; the per-step records, the per-epoch table, and the run's summary (None when
    stopped after ``max_steps`` meta steps)."""
    cfg = with_meta(cfg, scope="head")
    task = task if task is not None else build_task(cfg.data)
    trainer = make_trainer(cfg, task, model=model)
    assert isinstance(trainer, MetaTrainer)
    records = instrument(trainer, max_steps)
    summary = None
    with contextlib.suppress(_Stop):
        summary = trainer.fit(progress=False).summary
    rows = per_epoch(records)
    weights = {w["epoch"]: w for w in weight_trace(trainer.progress.history)}
    for row in rows:
        if row["epoch"] in weights:
            row["noisy_over_clean"] = weights[row["epoch"]]["noisy_over_clean"]
    out: dict[str, Any] = {"per_epoch": rows, "steps": records}
    if summary is not None:
        out["test_accuracy"] = summary["test_accuracy"]
        out["test_accuracy_at_best_val"] = summary["test_accuracy_at_best_val"]
    return out


# ----------------------------------------------------------------------------- staleness


def _peek_exact(
    trainer: MetaTrainer,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: Any,
    fresh: torch.Generator | None = None,
) -> torch.Tensor:
    """The exact hypergradient (flat, float64) at the trainer's current state on the batch;
    its meta batch is the one the trainer's generator would draw now (the generator is put
    back, so a meta step taken next draws the same one) or, given ``fresh``, one drawn from
    that generator instead (as an exact run draws a new one at every step). Nothing of the
    run moves."""
    generator = trainer.generator
    state = generator.get_state()
    if fresh is not None:
        trainer.generator = fresh
    try:
        return exact_hypergradient(trainer, x, y, idx).flat().detach().double()
    finally:
        trainer.generator = generator
        generator.set_state(state)


#: the seed offset of the staleness run's extra meta batches
FRESH_SEED = 7919


def track_staleness(trainer: MetaTrainer, max_steps: int | None = None) -> list[dict[str, Any]]:
    """Make every training step of ``trainer`` after the warm-up first compute the exact
    hypergradient on its state and batch (:func:`_peek_exact`; on a meta step with the meta
    batch the step draws, between meta steps with a fresh one of a generator of its own, as an
    exact run would draw at every step) and compare it with
    the hypergradient the run last applied (its last meta step's own) and with the previous
    step's exact one; returns the list the rows are appended to: ``epoch``, ``step`` (global),
    ``meta`` (a meta step), ``lag`` (steps since the last meta step, 0 on one), ``stale`` and
    ``consecutive`` (:func:`compare` of applied/previous against exact) and, on meta steps,
    ``own`` (the run's own hypergradient against the functional one). The run is the plain
    run. After ``max_steps`` instrumented steps, :class:`_Stop` is raised."""
    records: list[dict[str, Any]] = []
    plain_step, phase_one = trainer.train_step, trainer.meta_hypergradient
    # the meta batches of the steps between meta steps: fresh ones, from a generator of
    # their own (the run's draws only at its meta steps)
    fresh = torch.Generator().manual_seed(trainer.config.seed + FRESH_SEED)
    seen: dict[str, Any] = {"applied": None, "at": None, "previous": None, "own": None}

    def meta_hypergradient(x: torch.Tensor, y: torch.Tensor, idx: Any = None) -> Any:
        pending = phase_one(x, y, idx)
        seen["own"] = pending.result.flat().detach().double().clone()
        return pending

    def train_step(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> dict[str, float]:
        if trainer.in_warmup:
            return plain_step(x, y, idx)
        if max_steps is not None and len(records) >= max_steps:
            raise _Stop
        step, due = trainer.progress.global_step, trainer.meta_step_due
        exact = _peek_exact(trainer, x, y, idx, None if due else fresh)
        out = plain_step(x, y, idx)
        row: dict[str, Any] = {"epoch": trainer.progress.epoch + 1, "step": step, "meta": due}
        if due:
            own, seen["own"] = seen["own"], None
            assert own is not None, "a meta step that computed no hypergradient"
            row["own"] = compare(own, exact)
            seen["applied"], seen["at"] = own, step
        if seen["applied"] is not None:
            row["lag"] = step - seen["at"]
            row["stale"] = compare(seen["applied"], exact)
        if seen["previous"] is not None:
            row["consecutive"] = compare(seen["previous"], exact)
        seen["previous"] = exact
        records.append(row)
        return out

    trainer.meta_hypergradient = meta_hypergradient  # type: ignore[method-assign]
    trainer.train_step = train_step  # type: ignore[method-assign]
    return records


def _spread(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Median, mean, extreme and share of positive values of the cosines of ``rows[key]``,
    median and maximum of their relative errors, median norm ratio."""
    cos = [r[key]["cosine"] for r in rows if key in r]
    err = [r[key]["rel_error"] for r in rows if key in r]
    if not cos:
        return {"n": 0}
    return {
        "n": len(cos),
        "cosine_median": statistics.median(cos),
        "cosine_mean": statistics.mean(cos),
        "cosine_positive": sum(c > 0 for c in cos) / len(cos),
        "cosine_min": min(cos),
        "rel_error_median": statistics.median(err),
        "rel_error_max": max(err),
        "norm_ratio_median": statistics.median(r[key]["norm_ratio"] for r in rows if key in r),
    }


def staleness_tables(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per epoch and per lag: the applied hypergradient against the exact one on the steps
    between meta steps (lag >= 1), the consecutive exact hypergradients, the share of meta
    steps; and the check of the meta steps' own hypergradients."""
    between = [r for r in records if r.get("lag", 0) >= 1]
    epochs = []
    for epoch in sorted({r["epoch"] for r in records}):
        rs = [r for r in records if r["epoch"] == epoch]
        epochs.append(
            {
                "epoch": epoch,
                "steps": len(rs),
                "meta_steps": sum(r["meta"] for r in rs),
                "stale": _spread([r for r in rs if r.get("lag", 0) >= 1], "stale"),
                "consecutive": _spread(rs, "consecutive"),
                "norm_exact_median": statistics.median(
                    r["consecutive"]["norm_exact"] for r in rs if "consecutive" in r
                )
                if any("consecutive" in r for r in rs)
                else None,
            }
        )
    lags = []
    for lag in sorted({r["lag"] for r in records if "lag" in r}):
        rs = [r for r in records if r.get("lag") == lag]
        lags.append({"lag": lag, **_spread(rs, "stale"), "consecutive": _spread(rs, "consecutive")})
    own = [r["own"] for r in records if "own" in r]
    return {
        "steps": len(records),
        "meta_steps": len(own),
        "meta_share": len(own) / max(len(records), 1),
        "stale": _spread(between, "stale"),
        "consecutive": _spread(records, "consecutive"),
        "own_rel_error_max": max((o["rel_error"] for o in own), default=None),
        "own_cosine_min": min((o["cosine"] for o in own), default=None),
        "per_epoch": epochs,
        "per_lag": lags,
    }


def staleness_config(epochs: int, dataset: str = "mnist1d", seed: int = 0) -> TrainConfig:
    """The staleness run's configuration: the grid's MW-Net with :data:`STALENESS_META`."""
    return with_meta(run_config(dataset, "sym40", "MW-Net", seed, epochs), **STALENESS_META)


def staleness_run(
    cfg: TrainConfig, max_steps: int | None = None, task: Any = None
) -> dict[str, Any]:
    """Train ``cfg`` with every step after the warm-up compared to the exact hypergradient
    (:func:`track_staleness`); the per-step records, their tables, and the run's summary and
    weights trace (absent when stopped after ``max_steps`` steps)."""
    task = task if task is not None else build_task(cfg.data)
    trainer = make_trainer(cfg, task)
    assert isinstance(trainer, MetaTrainer)
    records = track_staleness(trainer, max_steps)
    summary = None
    with contextlib.suppress(_Stop):
        summary = trainer.fit(progress=False).summary
    out: dict[str, Any] = {"records": records, **staleness_tables(records)}
    if summary is not None:
        out["test_accuracy"] = summary["test_accuracy"]
        out["test_accuracy_at_best_val"] = summary["test_accuracy_at_best_val"]
        out["weights"] = weight_trace(trainer.progress.history)
    return out


def staleness_job(values: dict[str, Any]) -> dict[str, Any]:
    """:func:`staleness_run` of a configuration (in a worker process: one thread), without
    its per-step records."""
    from slem.train import parse_train_config

    torch.set_num_threads(1)
    out = staleness_run(parse_train_config(values))
    records = out.pop("records")
    # per step, compactly (for later analysis; kept in the cache, not in the JSON)
    columns = {
        "epoch": [r["epoch"] for r in records],
        "lag": [r.get("lag") for r in records],
        **{
            f"{key}_{stat}": [None if key not in r else round(r[key][stat], 6) for r in records]
            for key in ("stale", "consecutive")
            for stat in ("cosine", "rel_error", "norm_exact")
        },
    }
    return {**out, "per_step": columns}


# ------------------------------------------------------------------------------ accuracy


def accuracy_key(cfg: TrainConfig) -> str:
    """The cache key of a run: its whole configuration."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def train_one(values: dict[str, Any]) -> dict[str, Any]:
    """One accuracy run (in a worker process: one thread)."""
    from slem.train import parse_train_config

    torch.set_num_threads(1)
    cfg = parse_train_config(values)
    result = make_trainer(cfg, build_task(cfg.data)).fit(progress=False)
    s = result.summary
    out = {
        k: s.get(k)
        for k in (
            "test_accuracy",
            "test_accuracy_at_best_val",
            "val_accuracy",
            "weight_auc",
            "meta_step_time_ratio",
        )
    }
    return {**out, "weights": weight_trace(result.history)}


def weight_trace(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch of a weighting run: the mean (unnormalized) weight of the truly noisy training
    samples over that of the clean ones, and the weights' AUC (empty for ERM)."""
    return [
        {
            "epoch": h["epoch"],
            "noisy_over_clean": h["weight_mean_noisy"] / h["weight_mean_clean"],
            "weight_auc": h.get("weight_auc"),
        }
        for h in history
        if h.get("weight_mean_noisy") is not None and h.get("weight_mean_clean")
    ]


#: one training job: cache key, worker function, its configuration, the cache row's extras
Job = tuple[str, Callable[[dict[str, Any]], dict[str, Any]], TrainConfig, dict[str, Any]]


def accuracy_jobs(
    seeds: int, epochs: int, variants: tuple[str, ...], dataset: str = "mnist1d"
) -> list[tuple[str, int, Job]]:
    """The accuracy runs of ``variants`` on ``dataset``, seed by seed: (variant, seed, job)."""
    out = []
    for s in range(seeds):
        for v in variants:
            c = variant_config(v, s, epochs, dataset)
            extra = {"variant": v, "seed": s, "epochs": epochs, "dataset": dataset}
            out.append((v, s, (accuracy_key(c), train_one, c, extra)))
    return out


def run_jobs(cache: Cache, jobs: list[Job], n: int) -> None:
    """Run the ``jobs`` not in ``cache`` (``n`` at once, in worker processes of one thread
    each, when ``n > 1``), storing each in the cache as it finishes (in the given order)."""
    missing = [j for j in jobs if j[0] not in cache.rows]
    if n > 1 and len(missing) > 1:
        with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
            futures = [
                (key, extra, pool.submit(fn, c.model_dump(mode="json")))
                for key, fn, c, extra in missing
            ]
            for key, extra, fut in futures:
                cache.run(key, fut.result, **extra)
    else:
        for key, fn, c, extra in missing:
            cache.run(key, lambda fn=fn, c=c: fn(c.model_dump(mode="json")), **extra)


def accuracy(
    cache: Cache,
    seeds: int,
    epochs: int,
    jobs: int,
    variants: tuple[str, ...] = tuple(VARIANTS),
    dataset: str = "mnist1d",
) -> list[dict[str, Any]]:
    """The accuracy runs on ``dataset`` (cached; ``jobs`` at once), seed by seed."""
    todo = accuracy_jobs(seeds, epochs, variants, dataset)
    run_jobs(cache, [j for _, _, j in todo], jobs)
    return [{**cache.rows[j[0]], "variant": v, "seed": s} for v, s, j in todo]


def _stat(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "mean": statistics.mean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def accuracy_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: mean ± std of both accuracies (and per seed), the meta step time ratio and
    the average step's cost it implies at the variant's interval; per paired variant and
    seed: the difference to exact, its mean ± std, and whether the mean is within
    :data:`BOUND` of exact (issue 19's acceptance), per figure and on both."""
    metrics = ("test_accuracy", "test_accuracy_at_best_val")
    table = []
    for v in VARIANTS:
        rs = [r for r in rows if r["variant"] == v]
        if not rs:
            continue
        row: dict[str, Any] = {"variant": v, "seeds": [r["seed"] for r in rs]}
        for m in (*metrics, "meta_step_time_ratio"):
            vals = [r[m] for r in rs if r.get(m) is not None]
            row[m] = _stat(vals)
        row["per_seed"] = {m: {str(r["seed"]): r[m] for r in rs} for m in metrics}
        last = [r["weights"][-1]["noisy_over_clean"] for r in rs if r.get("weights")]
        row["noisy_over_clean"] = _stat(last)
        # a meta step every k steps costs r plain steps: (r + k - 1) / k per step on average
        ratio, k = row["meta_step_time_ratio"]["mean"], VARIANTS[v][1].get("interval", 1)
        row["interval"] = k
        row["step_cost_ratio"] = None if ratio is None else (ratio + k - 1) / k
        table.append(row)
    exact = {r["seed"]: r for r in rows if r["variant"] == "exact"}
    paired = []
    for v in PAIRED:
        diffs = {
            m: [(r["seed"], r[m] - exact[r["seed"]][m]) for r in rows if r["variant"] == v]
            for m in metrics
        }
        if not diffs["test_accuracy"]:
            continue
        paired.append(
            {
                "variant": v,
                "per_seed": {m: {str(s): d for s, d in diffs[m]} for m in metrics},
                **{m: _stat([d for _, d in diffs[m]]) for m in metrics},
            }
        )
        stats = paired[-1]
        # issue 19's acceptance: within BOUND of exact, mean over the seeds, on both figures
        within = {m: abs(stats[m]["mean"]) <= BOUND for m in metrics}
        stats["within_bound"] = {**within, "both": all(within.values())}
    return {"table": table, "paired": paired, "bound": BOUND}


# ----------------------------------------------------------------------------- diagnosis

#: the losses at which :class:`Diagnosis` evaluates the learned rule
LOSS_GRID = (0.05, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0)
#: the variants diagnosed epoch by epoch (seed 0)
DIAGNOSED = ("exact", "head", "head + meta wd 0")


class Diagnosis(Callback):
    """After every epoch, in eval mode (nothing of the run changes): test accuracy; on the
    training set, the fit of the clean labels, the share of noisy samples predicted as their
    noisy label (memorized) and as their true label; the learned weights' mean on noisy and on
    the hardest tenth of the clean samples (by loss) over their mean on clean ones; the rule's
    (unnormalized) weight at the losses :data:`LOSS_GRID`; and the norm of its parameters."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        task, sw = trainer.task, trainer.sample_weights
        trainer.model.eval()
        with torch.no_grad():
            pred = trainer.model(trainer.train_x).argmax(1).cpu().numpy()
            test = (trainer.model(trainer.test_x).argmax(1) == trainer.test_y).float().mean()
        noisy = task.train.noisy_mask
        y, true = trainer.train_y.cpu().numpy(), task.train.y_true
        row: dict[str, Any] = {
            "epoch": metrics["epoch"],
            "test_accuracy": float(test),
            "clean_fit": float((pred[~noisy] == y[~noisy]).mean()),
            "noisy_memorized": float((pred[noisy] == y[noisy]).mean()),
            "noisy_true": float((pred[noisy] == true[noisy]).mean()),
        }
        if sw is not None:
            w = trainer.train_weights()
            losses = sw.objective.eval_losses(trainer.model, trainer.train_x, trainer.train_y)
            losses = losses.cpu().numpy()
            clean = ~noisy
            hard = clean & (losses > np.quantile(losses[clean], 0.9))
            grid = torch.tensor(LOSS_GRID)
            with torch.no_grad():
                inputs = sw.observer.features(grid, None, sw.clock())
                curve = sw.net(inputs, torch.zeros(len(grid), dtype=torch.long))
            row.update(
                noisy_over_clean=float(w[noisy].mean() / w[clean].mean()),
                hard_clean_over_clean=float(w[hard].mean() / w[clean].mean()),
                rule=[float(c) for c in curve],
                rule_norm=math.sqrt(
                    sum(float((p.detach() ** 2).sum()) for p in trainer.methodology.parameters())
                ),
            )
        self.rows.append(row)
        trainer.model.train()


def diagnose(values: dict[str, Any]) -> dict[str, Any]:
    """One run with :class:`Diagnosis`: its per-epoch rows and final test accuracy."""
    from slem.train import parse_train_config

    torch.set_num_threads(1)
    cfg = parse_train_config(values)
    probe = Diagnosis()
    result = make_trainer(cfg, build_task(cfg.data), callbacks=[probe]).fit(progress=False)
    return {"test_accuracy": result.summary["test_accuracy"], "epochs": probe.rows}


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (1 thread each)")
    parser.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated, from {', '.join(PARTS)}",
    )
    parser.add_argument(
        "--variants", default=None, help="MNIST-1D accuracy variants, comma-separated"
    )
    parser.add_argument("--no-fashion", action="store_true", help="MNIST-1D only")
    parser.add_argument(
        "--fashion-seeds", type=int, default=3, help="accuracy seeds on Fashion-MNIST (0: none)"
    )
    parser.add_argument(
        "--fashion-epochs", type=int, default=None, help="head bias on Fashion-MNIST (default 20)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"unknown parts {sorted(parts - set(PARTS))}; choose from {PARTS}")
    default_variants = QUICK_VARIANTS if args.quick else tuple(VARIANTS)
    variants = tuple(args.variants.split(",")) if args.variants else default_variants
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant '{v}'; choose from {', '.join(VARIANTS)}")
    # --quick never touches the committed results: a temporary JSON and cache unless given
    scratch = Path(tempfile.mkdtemp(prefix="slem-fast-mode-")) if args.quick else None
    default_json = scratch / "fast_mode.json" if scratch else RESULTS / "fast_mode.json"
    target = Path(args.json) if args.json else default_json
    cache_dir = Path(args.cache) if args.cache else None
    cache_dir = cache_dir or (scratch / "cache" if scratch else RESULTS / "fast_mode")
    out: dict[str, Any] = json.loads(target.read_text()) if target.is_file() else {}
    out["quick"] = args.quick
    fashion = not (args.quick or args.no_fashion) and find_dir() is not None
    mnist_epochs = 2 if args.quick else int(DATASETS["mnist1d"]["epochs"])
    cache = Cache(cache_dir)
    # the staleness run and the accuracy runs: one pool of --jobs workers
    jobs: list[Job] = []
    stale_cfg = staleness_config(mnist_epochs)
    stale_key = "staleness|" + accuracy_key(stale_cfg)
    if "staleness" in parts:
        extra = {"part": "staleness", "seed": 0, "epochs": mnist_epochs, "dataset": "mnist1d"}
        jobs.append((stale_key, staleness_job, stale_cfg, extra))
    plan: list[tuple[str, str, int, list[tuple[str, int, Job]]]] = []
    if "accuracy" in parts:
        seeds = 1 if args.quick else args.seeds
        todo = accuracy_jobs(seeds, mnist_epochs, variants)
        plan.append(("accuracy", "mnist1d", mnist_epochs, todo))
        if fashion and args.fashion_seeds:
            epochs = int(DATASETS["fashion-mnist"]["epochs"])
            chosen = [v for v in FASHION_VARIANTS if v in variants]
            todo = accuracy_jobs(args.fashion_seeds, epochs, tuple(chosen), "fashion-mnist")
            seed0 = tuple(v for v in FASHION_SEED0_VARIANTS if v in variants)
            todo += accuracy_jobs(1, epochs, seed0, "fashion-mnist")
            plan.append(("accuracy_fashion", "fashion-mnist", epochs, todo))
    # the longest first: the staleness run, then the Fashion-MNIST runs
    jobs += [j for *_, todo in reversed(plan) for _, _, j in todo]
    run_jobs(cache, jobs, args.jobs)
    for name, dataset, epochs, todo in plan:
        rows = [{**cache.rows[j[0]], "variant": v, "seed": s} for v, s, j in todo]
        out[name] = accuracy_block(dataset, epochs, rows)
        print(json.dumps(out[name]["paired"], indent=1))
    if "staleness" in parts:
        row = cache.rows[stale_key]
        keys = (*STALENESS_KEYS, "test_accuracy", "test_accuracy_at_best_val", "weights")
        entry = {k: row.get(k) for k in keys}
        entry.update(dataset="mnist1d", seed=0, epochs=mnist_epochs, meta=STALENESS_META)
        # the instrumented run is the plain one: the same weights trace and final accuracy
        plain = cache.rows.get(accuracy_key(stale_cfg))
        if plain is not None:
            same = all(plain[k] == row[k] for k in ("test_accuracy", "weights"))
            entry["plain_test_accuracy"] = plain["test_accuracy"]
            entry["same_as_plain"] = same
            assert same, "the instrumented staleness run differs from the plain run"
        out["staleness"] = entry
        for r in entry["per_lag"]:
            print(json.dumps(r), flush=True)
    if "head-bias" in parts:
        out["bias"] = []
        for dataset in ["mnist1d", "fashion-mnist"] if fashion else ["mnist1d"]:
            epochs = 2 if args.quick else int(DATASETS[dataset]["epochs"])
            if dataset == "fashion-mnist" and args.fashion_epochs:
                epochs = args.fashion_epochs
            result = bias_run(run_config(dataset, "sym40", "MW-Net", 0, epochs))
            steps = result.pop("steps")
            cos = [s["cosine"] for s in steps]
            err = [s["rel_error"] for s in steps]
            assert all(math.isfinite(c) for c in cos)
            out["bias"].append(
                {
                    "dataset": dataset,
                    "seed": 0,
                    "epochs": epochs,
                    "meta_steps": len(steps),
                    "cosine_median": statistics.median(cos),
                    "cosine_min": min(cos),
                    "rel_error_median": statistics.median(err),
                    "rel_error_max": max(err),
                    **result,
                }
            )
            for r in result["per_epoch"]:
                print(json.dumps({"dataset": dataset, **r}), flush=True)
            target.write_text(json.dumps(out, indent=1))
    if "diagnose" in parts:
        out["diagnosis"] = []
        for v in DIAGNOSED:
            cfg = variant_config(v, 0, mnist_epochs)
            key = "diagnosis|" + accuracy_key(cfg)
            row = cache.run(key, lambda c=cfg: diagnose(c.model_dump(mode="json")), variant=v)
            out["diagnosis"].append(
                {
                    "variant": v,
                    "seed": 0,
                    "test_accuracy": row["test_accuracy"],
                    "epochs": row["epochs"],
                }
            )
    target.write_text(json.dumps(out, indent=1))
    print(f"wrote {target}")


#: what the JSON keeps of the staleness run's tables
STALENESS_KEYS = (
    "steps",
    "meta_steps",
    "meta_share",
    "stale",
    "consecutive",
    "own_rel_error_max",
    "own_cosine_min",
    "per_epoch",
    "per_lag",
)


def accuracy_block(dataset: str, epochs: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON of one dataset's accuracy runs: the runs and their summary."""
    keys = (
        "variant",
        "seed",
        "test_accuracy",
        "test_accuracy_at_best_val",
        "val_accuracy",
        "meta_step_time_ratio",
        "weight_auc",
        "weights",
        "seconds",
    )
    return {
        "dataset": dataset,
        "noise": "sym40",
        "epochs": epochs,
        "runs": [{k: r.get(k) for k in keys} for r in rows],
        **accuracy_summary(rows),
    }


if __name__ == "__main__":
    main()
