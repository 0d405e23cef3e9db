"""What a meta step costs against an ERM step (issue 19), in one process.

    python benchmarks/meta_cost.py [--quick] [--rounds N] [--threads N] [--profile]
        [--models fashion_cnn,mnist1d_cnn] [--json PATH]

Two CNNs, batch 100 and meta batch 100 (``meta.batch_size: 100``): the stock Fashion-MNIST CNN
(``model: {arch: cnn2d, width: 88}``, 422k parameters; skipped with a message when the
Fashion-MNIST files are not installed) and the MNIST-1D CNN (``cnn1d``, width 32). On each,
every variant below takes steps on the same training batch (the first 100 training rows),
timed round-robin: each of ``--rounds`` rounds runs every variant once, in an order that
rotates from round to round, and the first 2 rounds are discarded as warm-up. Reported: the
median step time, its quartiles, and the ratio of the medians to ERM's.

* **ERM**: slem's plain trainer step (``method: erm``).
* **published recipe**: MW-Net's iteration as the paper describes it (Shu et al., NeurIPS
  2019, Algorithm 1), re-implemented here from that description (:class:`PublishedMWNet`): a
  fresh differentiable copy of the network every step, a ``create_graph=True`` virtual SGD
  step, the meta loss at the looked-ahead parameters back-propagated into the weighting net
  (1-100-1, sigmoid, weights normalized to sum to one over the batch), an Adam step on it, then
  the real step with a fresh forward.
* **slem exact**: ``method: mwnet`` at its defaults (``meta.scope: model``, ``meta.order:
  mwnet``), and in the ``lagged`` order.
* **slem fast mode**: the exact meta step amortized, on every 5th training step in the lagged
  order (``meta.interval: 5``, ``meta.order: lagged``); also every 7th in the mwnet order
  (``meta.interval: 7``). A variant with ``meta.interval: k`` is timed over blocks of k
  consecutive steps (one meta step and k-1 plain ones), each block starting with the meta
  step, and the block's time is divided by k.
* **slem layer subset**: ``meta.scope: head`` (the virtual step moves only the output layer),
  also with ``meta.interval: 2`` (measured, not the fast mode: it costs accuracy,
  ``benchmarks/fast_mode.py``).
* **the other meta-learned methodologies** at their defaults: CMW-Net, CMW-Net-SL, the loss
  adjuster, the transition net, MLR-SNet (``lr_schedule``), the joint bundle. Every meta
  variant runs with ``meta.warmup_epochs: 0``, and every one of them takes a meta step on
  every timed step (their ``interval`` settings default to 1; the JSON records the count).

Also measured: the peak extra memory of one step of each variant (peak RSS on CPU,
``max_memory_allocated`` on CUDA; :func:`hypergrad.measure`; the median of 3 repetitions of the
largest single-step peak in a block, :func:`step_peak`; ``--memory-only JSON`` measures it
again into an earlier run's JSON) and its ratio to ERM's; the
agreement in float64 of slem's exact hypergradient with the published recipe's on a small
copy of each CNN (width 8), with the virtual step made plain SGD on both sides; and, with
``--profile`` (on by default in a full run), a torch.profiler breakdown of the ERM, slem
exact, slem layer-subset and published steps by kind of operation, with the unit costs that bound
them (one forward, one backward, one forward-mode JVP pass).

``--quick``: the MNIST-1D CNN alone, 8 rounds (well under 2 minutes on 2 cores). The JSON
carries each model's ratios under ``models.NAME.ratios`` and one model's at its top level
(``ratio_fast_to_plain``, ``ratio_exact_to_plain``, ``ratio_published_to_exact``, ...):
``ratios_model`` names it, the Fashion CNN when it was measured, else the MNIST-1D CNN.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile

from hypergrad import malloc_mode, measure
from slem.data import build_task
from slem.data.sources.fashion_mnist import find_dir
from slem.data.task import Task
from slem.provenance import provenance
from slem.train import make_trainer, parse_train_config
from slem.train.models import build_model
from slem.train.threads import set_threads

BATCH = 100
DISCARD = 2  # warm-up rounds left out of the statistics

MODELS: dict[str, dict[str, Any]] = {
    "fashion_cnn": {
        "label": "Fashion CNN",
        "model": {"arch": "cnn2d", "width": 88},
        "data": {
            "name": "fashion-mnist",
            "size": 3000,
            "noise": "symmetric:0.4",
            "meta_per_class": 10,
        },
    },
    "mnist1d_cnn": {
        "label": "MNIST-1D CNN",
        "model": {"arch": "cnn1d", "width": 32},
        "data": {"name": "mnist1d", "noise": "symmetric:0.4", "meta_per_class": 10},
    },
}

#: key -> (label, method, meta settings, steps per timed block, table)
VARIANTS: dict[str, tuple[str, str, dict[str, Any], int, str]] = {
    "erm": ("ERM (method erm)", "erm", {}, 1, "main"),
    "published": ("published MW-Net recipe (re-implemented)", "published", {}, 1, "main"),
    "exact": ("slem exact (scope model, order mwnet)", "mwnet", {}, 1, "main"),
    "exact_lagged": ("slem exact, order lagged", "mwnet", {"order": "lagged"}, 1, "main"),
    "fast": (
        "slem fast mode: exact every 5th step, order lagged (meta.interval 5)",
        "mwnet",
        {"interval": 5, "order": "lagged"},
        5,
        "main",
    ),
    "interval7": (
        "slem exact every 7th step (meta.interval 7)",
        "mwnet",
        {"interval": 7},
        7,
        "main",
    ),
    "head": ("slem layer subset (scope head)", "mwnet", {"scope": "head"}, 1, "main"),
    "head_interval2": (
        "slem layer subset (scope head), interval 2",
        "mwnet",
        {"scope": "head", "interval": 2},
        2,
        "main",
    ),
    "cmwnet": ("CMW-Net", "cmwnet", {}, 1, "other"),
    "cmwnet_sl": ("CMW-Net-SL", "cmwnet_sl", {}, 1, "other"),
    "loss_adjuster": ("loss adjuster", "loss_adjuster", {}, 1, "other"),
    "transition": ("transition net", "transition", {}, 1, "other"),
    "lr_schedule": ("MLR-SNet (lr_schedule)", "lr_schedule", {}, 1, "other"),
    "joint": ("joint bundle (mwnet, loss_adjuster, lr_schedule)", "joint", {}, 1, "other"),
}


def run_values(
    spec: dict[str, Any], method: str, meta: dict[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """The config values of one variant on one model: batch 100, meta batch 100, meta steps
    from the first step on."""
    values: dict[str, Any] = {
        "method": method,
        "model": dict(spec["model"]),
        "data": dict(spec["data"]),
        "optim": {"batch_size": BATCH},
    }
    if method != "erm":
        values["meta"] = {"warmup_epochs": 0, "batch_size": BATCH, **(meta or {})}
    for section, value in overrides.items():
        values[section] = {**values.get(section, {}), **value}
    return values


def available(spec: dict[str, Any]) -> str | None:
    """Why the model's data cannot be had here (None: it can)."""
    if spec["data"]["name"] == "fashion-mnist" and find_dir() is None:
        return "Fashion-MNIST files not installed ($SLEM_DATA, /usr/share/datasets/fashion-mnist)"
    return None


# ----------------------------------------------------------------------------- published


def weighting_net() -> nn.Module:
    """MW-Net's weighting net: 1-100-1, ReLU, sigmoid output."""
    return nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1), nn.Sigmoid())


class PublishedMWNet:
    """MW-Net's training iteration as published (Shu et al., "Meta-Weight-Net: Learning an
    Explicit Mapping For Sample Weighting", NeurIPS 2019, Algorithm 1 and Eq. 3-5), written
    from the paper's description.

    Each iteration: (5) a fresh copy of the network carries the current parameters, and a
    virtual SGD step on the weighted training loss, ``theta' = theta - lr * grad``, is kept
    differentiable in the weighting net's parameters (``create_graph=True``); (6) the meta
    loss at ``theta'`` on the meta batch is back-propagated into the weighting net, which takes
    an Adam step; (7) the real step: a fresh forward of the model on the training batch,
    weights from the updated net (no gradient), an SGD step on the weighted loss. The weights
    are normalized to sum to one over the batch, as MW-Net does (slem's ``batch``
    normalization: mean one, times the mean).

    Args:
        build: a fresh module of the model's architecture (the differentiable copy).
        model: the model trained.
        vnet: the weighting net (:func:`weighting_net`).
        lr, momentum, weight_decay: the model's SGD optimizer; the virtual step takes
            plain SGD at its current rate.
        meta_lr, meta_weight_decay: the weighting net's Adam.
    """

    def __init__(
        self,
        build: Callable[[], nn.Module],
        model: nn.Module,
        vnet: nn.Module,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        meta_lr: float = 1e-3,
        meta_weight_decay: float = 1e-4,
    ) -> None:
        self.build, self.model, self.vnet = build, model, vnet
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.vnet_optimizer = torch.optim.Adam(
            vnet.parameters(), lr=meta_lr, weight_decay=meta_weight_decay
        )

    def weights(self, cost: Tensor) -> Tensor:
        """The net's weights of the per-sample ``cost`` ``(n,)`` (read as values), normalized
        to sum to one (left as they are if they sum to zero)."""
        w: Tensor = self.vnet(cost.detach().unsqueeze(1)).squeeze(1)
        total = w.sum()
        return w / total if float(total.detach()) != 0 else w

    def meta_gradient(self, x: Tensor, y: Tensor, xm: Tensor, ym: Tensor) -> Tensor:
        """Step 5-6 up to the weighting net's gradient (left in its ``.grad``); the meta
        loss."""
        meta_model = self.build()
        meta_model.load_state_dict(self.model.state_dict())
        meta_model.train()
        params = dict(meta_model.named_parameters())
        cost = F.cross_entropy(meta_model(x), y, reduction="none")
        loss = (cost * self.weights(cost)).sum()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        lr = self.optimizer.param_groups[0]["lr"]
        virtual = {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
        meta_loss = F.cross_entropy(functional_call(meta_model, virtual, (xm,)), ym)
        self.vnet_optimizer.zero_grad()
        meta_loss.backward()
        return meta_loss.detach()

    def step(self, x: Tensor, y: Tensor, xm: Tensor, ym: Tensor) -> float:
        """One whole iteration; the real step's loss."""
        self.meta_gradient(x, y, xm, ym)
        self.vnet_optimizer.step()
        self.model.train()
        cost = F.cross_entropy(self.model(x), y, reduction="none")
        with torch.no_grad():
            w = self.weights(cost)
        loss = (cost * w).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def model_builder(
    task: Task, spec: dict[str, Any], dtype: torch.dtype = torch.float32
) -> Callable[[], nn.Module]:
    """A fresh module of the model's architecture (as a trainer builds it)."""
    shape, n_out = task.features.input_shape, task.n_classes
    return lambda: build_model(shape, n_out, **spec["model"]).to(dtype)


# ----------------------------------------------------------------------------- timing


@dataclass
class Bench:
    """Every variant of one model, on one task and one shared batch."""

    key: str
    spec: dict[str, Any]
    task: Task
    variants: list[str]
    steps: dict[str, Callable[[], Any]] = field(default_factory=dict)
    trainers: dict[str, Any] = field(default_factory=dict)
    published: PublishedMWNet | None = None
    batch: tuple[Tensor, Tensor, Tensor] | None = None
    params: int = 0

    def build(self) -> None:
        for name in self.variants:
            _, method, meta, _, _ = VARIANTS[name]
            if method == "published":
                continue
            trainer = make_trainer(
                parse_train_config(run_values(self.spec, method, meta)), self.task
            )
            trainer.on_epoch_start()  # what the loop does first (MLR-SNet's loss scale)
            self.trainers[name] = trainer
        first = next(iter(self.trainers.values()))
        x, y = first.train_x[:BATCH], first.train_y[:BATCH]
        self.batch = (x, y, torch.arange(len(y), device=y.device))
        self.params = sum(p.numel() for p in first.model.parameters())
        for name, trainer in self.trainers.items():
            self.steps[name] = self._trainer_step(trainer, VARIANTS[name][3])
        if "published" in self.variants:
            meta_trainer = make_trainer(
                parse_train_config(run_values(self.spec, "mwnet")), self.task
            )
            assert meta_trainer.meta_x is not None and meta_trainer.meta_y is not None
            xm, ym = meta_trainer.meta_x[:BATCH], meta_trainer.meta_y[:BATCH]
            torch.manual_seed(0)  # the same initial model as the trainers'
            build = model_builder(self.task, self.spec)
            model = build().to(x.device)
            torch.manual_seed(1)
            o = meta_trainer.config.optim
            self.published = PublishedMWNet(
                lambda: build().to(x.device),
                model,
                weighting_net().to(x.device),
                o.lr,
                o.momentum,
                o.weight_decay,
            )
            published = self.published
            self.steps["published"] = lambda: published.step(x, y, xm, ym)
        self.steps = {name: self.steps[name] for name in self.variants}

    def _trainer_step(self, trainer: Any, block: int) -> Callable[[], None]:
        assert self.batch is not None
        batch = self.batch

        def run() -> None:
            for _ in range(block):
                trainer.step(batch)  # what the training loop calls, at the scheduled rate
                trainer.progress.global_step += 1  # the loop's count (meta.interval reads it)

        return run

    def meta_steps_per_step(self, name: str) -> float | None:
        """Meta steps taken per training step so far (None: the published recipe)."""
        trainer = self.trainers.get(name)
        if trainer is None:
            return None
        steps = trainer.progress.global_step
        return round(len(trainer.progress.timings.get("meta", [])) / max(steps, 1), 3)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(steps: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each step in each round; the order rotates from round to round, so drift
    (another process, thermal state) falls on every variant alike."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync()
            start = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def step_peak(bench: Bench, name: str, repeats: int = 3) -> float | None:
    """The peak extra memory (MiB) of one training step of variant ``name``: the median over
    ``repeats`` of the largest single-step peak within a block (a ``meta.interval: k`` block
    from its meta step: the step's peak is its meta step's, measured alone, not the rise over
    k steps, which heap growth between the steps inflates)."""
    block = VARIANTS[name][3]
    trainer = bench.trainers.get(name)
    one = bench._trainer_step(trainer, 1) if trainer is not None else bench.steps[name]
    worst: list[float] = []
    for _ in range(repeats):
        peaks = [measure(one)[2] for _ in range(block)]
        if any(p is None for p in peaks):
            return None
        worst.append(max(p for p in peaks if p is not None))
    return statistics.median(worst)


def step_peaks(bench: Bench) -> dict[str, float | None]:
    """:func:`step_peak` of every variant, after one warm-up block each."""
    malloc_mode(measuring=True)
    try:
        out: dict[str, float | None] = {}
        for name, fn in bench.steps.items():
            fn()
            out[name] = step_peak(bench, name)
        return out
    finally:
        malloc_mode(measuring=False)


def time_model(bench: Bench, rounds: int) -> list[dict[str, Any]]:
    """The timing table of one model (then the peak memory of each variant)."""
    malloc_mode(measuring=False)
    times = interleaved(bench.steps, rounds)
    discard = min(DISCARD, rounds - 1)
    peaks = step_peaks(bench)
    rows: list[dict[str, Any]] = []
    for name, seconds in times.items():
        label, _, _, block, table = VARIANTS[name]
        per_step = [s / block for s in seconds[discard:]]
        q1, q2, q3 = quartiles(per_step)
        peak = peaks[name]
        rows.append(
            {
                "variant": name,
                "label": label,
                "table": table,
                "steps_per_block": block,
                "median_ms": round(1000 * q2, 2),
                "p25_ms": round(1000 * q1, 2),
                "p75_ms": round(1000 * q3, 2),
                "iqr_ms": round(1000 * (q3 - q1), 2),
                "peak_mib": None if peak is None else round(peak, 1),
                "meta_steps_per_step": bench.meta_steps_per_step(name),
            }
        )
    erm = next(r for r in rows if r["variant"] == "erm")
    for r in rows:
        r["ratio_to_erm"] = round(r["median_ms"] / erm["median_ms"], 3)
        mib, base = r["peak_mib"], erm["peak_mib"]
        r["memory_ratio_to_erm"] = None if mib is None or not base else round(mib / base, 2)
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The ratios the issue names, and the others this benchmark has."""
    ms = {r["variant"]: r["median_ms"] for r in rows}
    mem = {r["variant"]: r["memory_ratio_to_erm"] for r in rows}
    out: dict[str, float] = {}

    def put(name: str, a: str, b: str) -> None:
        if a in ms and b in ms:
            out[name] = round(ms[a] / ms[b], 3)

    put("ratio_fast_to_plain", "fast", "erm")
    put("ratio_exact_to_plain", "exact", "erm")
    put("ratio_published_to_exact", "published", "exact")
    put("ratio_published_to_fast", "published", "fast")
    put("ratio_published_to_plain", "published", "erm")
    put("ratio_lagged_to_plain", "exact_lagged", "erm")
    put("ratio_interval7_to_plain", "interval7", "erm")
    put("ratio_head_to_plain", "head", "erm")
    put("ratio_head_interval2_to_plain", "head_interval2", "erm")
    put("ratio_published_to_lagged", "published", "exact_lagged")
    for name, label in (
        ("exact", "exact"),
        ("exact_lagged", "lagged"),
        ("fast", "fast"),
        ("head", "head"),
        ("published", "published"),
    ):
        if mem.get(name) is not None:
            out[f"memory_ratio_{label}_to_plain"] = mem[name]
    return out


# ----------------------------------------------------------------------------- agreement


def _flat(grads: dict[str, Tensor]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def agreement(task: Task, spec: dict[str, Any], width: int = 8, steps: int = 2) -> dict[str, Any]:
    """slem's exact hypergradient (the trainer's phase one, ``meta.scope: model``) against
    the published recipe's, in float64 on a width-``width`` copy of the model, at the same
    state (after ``steps`` meta steps), on the same batch and meta batch. Both sides take a
    plain SGD virtual step (``meta.virtual_step: sgd``; SGD without momentum or weight decay)
    and normalize the weights over the batch (``meta.normalize_weights: batch``); BatchNorm
    normalizes with the batch's statistics on both. Also: the fast mode's (``scope: head``)
    hypergradient on the same state, its cosine and relative error against the exact one (the
    fast mode's bias at that state)."""
    small = {**spec, "model": {**spec["model"], "width": width}}
    optim = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "lr": 0.1}
    trainers = {}
    for scope in ("model", "head"):
        meta = {"virtual_step": "sgd", "normalize_weights": "batch", "scope": scope}
        values = run_values(small, "mwnet", meta, optim=optim)
        trainer = make_trainer(parse_train_config(values), task)
        trainer.model.double()
        assert trainer.methodology is not None and trainer.meta_x is not None
        trainer.methodology.double()
        trainer.meta_x = trainer.meta_x.double()
        trainers[scope] = trainer
    exact, head = trainers["model"], trainers["head"]
    x, y = exact.train_x[:BATCH].double(), exact.train_y[:BATCH]
    idx = torch.arange(len(y), device=y.device)
    for _ in range(steps):  # away from the initial state
        exact.step((x, y, idx))
        exact.progress.global_step += 1
    head.model.load_state_dict(exact.model.state_dict())
    head.methodology.load_state_dict(exact.methodology.state_dict())
    state = exact.generator.get_state()
    outer = exact._outer_batch()  # the meta batch phase one draws next
    exact.generator.set_state(state)
    head.generator.set_state(state)
    pending = exact.meta_hypergradient(x, y, idx)
    slem_grads = {k.removeprefix("net."): g for k, g in pending.result.grads.items()}
    head_grads = {
        k.removeprefix("net."): g
        for k, g in head.meta_hypergradient(x, y, idx).result.grads.items()
    }

    vnet = weighting_net().double().to(x.device)
    vnet.load_state_dict(
        {k.removeprefix("net."): v for k, v in exact.methodology.state_dict().items()}
    )
    published = PublishedMWNet(
        lambda: model_builder(task, small, torch.float64)().to(x.device),
        exact.model,
        vnet,
        exact.optimizer.param_groups[0]["lr"],
        momentum=0.0,
        weight_decay=0.0,
    )
    published.meta_gradient(x, y, outer["x"], outer["y"])
    theirs = {k: p.grad for k, p in vnet.named_parameters() if p.grad is not None}
    if set(theirs) != set(slem_grads):
        raise RuntimeError(f"parameter names differ: {sorted(theirs)} vs {sorted(slem_grads)}")
    per_param = {
        k: float((slem_grads[k] - theirs[k]).norm() / theirs[k].norm().clamp_min(1e-300))
        for k in theirs
    }
    a, b = _flat(slem_grads), _flat({k: theirs[k] for k in slem_grads})
    h = _flat({k: head_grads[k] for k in slem_grads})
    return {
        "width": width,
        "params": sum(p.numel() for p in exact.model.parameters()),
        "dtype": "float64",
        "state": f"after {steps} meta steps",
        "max_rel_error": max(per_param.values()),
        "rel_error_all": float((a - b).norm() / b.norm()),
        "rel_error_per_param": per_param,
        "hypergrad_norm": float(b.norm()),
        "head_cosine_to_exact": float(torch.dot(h, a) / (h.norm() * a.norm())),
        "head_rel_error_to_exact": float((h - a).norm() / a.norm()),
    }


# ----------------------------------------------------------------------------- profile

#: the profile's categories: name -> test of an operator name
CATEGORIES: dict[str, Callable[[str], bool]] = {
    "conv_backward": lambda n: "conv" in n and "backward" in n,
    "conv_forward": lambda n: "conv" in n and n.startswith("aten::"),
    "batch_norm": lambda n: "batch_norm" in n,
    "pooling": lambda n: "pool" in n,
    "other_ops": lambda n: n.startswith("aten::"),
}


def category(name: str) -> str:
    for cat, test in CATEGORIES.items():
        if test(name):
            return cat
    return "other_events"  # autograd engine, optimizer and profiler bookkeeping


def profile_steps(step: Callable[[], Any], steps: int) -> dict[str, Any]:
    """torch.profiler over ``steps`` calls of ``step``: per-step milliseconds of self CPU
    time in each category, the untracked remainder (Python, dispatch between operators) and
    the wall time under the profiler."""
    step()
    sync()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = time.perf_counter() - start
    totals = dict.fromkeys([*CATEGORIES, "other_events"], 0.0)
    others: dict[str, float] = {}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000.0
        totals[category(event.key)] += ms
        if category(event.key) == "other_ops":
            others[event.key] = ms
    out: dict[str, Any] = {k: round(v / steps, 2) for k, v in totals.items()}
    out["python_untracked"] = round(max(1000 * wall - sum(totals.values()), 0.0) / steps, 2)
    out["wall_ms"] = round(1000 * wall / steps, 2)
    top = sorted(others.items(), key=lambda kv: -kv[1])[:6]
    out["top_other_ops"] = {k: round(v / steps, 2) for k, v in top}
    return out


def unit_costs(model: nn.Module, x: Tensor, y: Tensor, reps: int) -> dict[str, float]:
    """Median milliseconds of the passes a step is made of, on the model in train mode:
    a forward with and without a graph (to the per-sample losses), a backward (of their mean),
    and a forward-mode JVP pass (dual parameters through the model, tangents of the
    per-sample losses); interleaved over ``reps`` rounds."""
    model.train()
    params = {k: p.detach() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    tangents = {k: torch.randn(p.shape, generator=gen).to(p) for k, p in params.items()}

    def forward() -> None:
        F.cross_entropy(model(x), y, reduction="none")

    def forward_no_grad() -> None:
        with torch.no_grad():
            F.cross_entropy(model(x), y, reduction="none")

    def jvp() -> None:
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        with fwAD.dual_level(), torch.no_grad():
            duals = {k: fwAD.make_dual(params[k], tangents[k]) for k in params}
            out = functional_call(model, (duals, buffers), (x,))
            fwAD.unpack_dual(F.cross_entropy(out, y, reduction="none"))

    times: dict[str, list[float]] = {
        "forward": [],
        "forward_no_grad": [],
        "backward": [],
        "jvp": [],
    }
    for _ in range(reps + 1):
        for name, fn in (("forward", forward), ("forward_no_grad", forward_no_grad), ("jvp", jvp)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
        loss = F.cross_entropy(model(x), y)
        sync()
        start = time.perf_counter()
        loss.backward()
        sync()
        times["backward"].append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    med = {k: 1000 * statistics.median(v[1:]) for k, v in times.items()}
    f, f0, b, j = med["forward"], med["forward_no_grad"], med["backward"], med["jvp"]
    floors = {
        # ERM: F + B; exact (mwnet order): train F + B, meta F + B at theta', the JVP, and
        # the real step's second backward through the kept forward; lagged: without it;
        # head (layer subset): the real F + B and the meta batch's features (F without a graph)
        "floor_erm_ms": f + b,
        "floor_exact_ms": 2 * f + 3 * b + j,
        "floor_lagged_ms": 2 * f + 2 * b + j,
        "floor_head_ms": f + b + f0,
    }
    out = {f"{k}_ms": round(v, 2) for k, v in med.items()}
    out.update({k: round(v, 2) for k, v in floors.items()})
    base = floors["floor_erm_ms"]
    for k in ("exact", "lagged", "head"):
        out[f"floor_ratio_{k}"] = round(floors[f"floor_{k}_ms"] / base, 2)
    out["backward_to_forward"] = round(b / f, 2)
    out["jvp_to_forward"] = round(j / f, 2)
    return out


def profile_model(bench: Bench, steps: int, reps: int) -> dict[str, Any]:
    wanted = [v for v in ("erm", "exact", "head", "published") if v in bench.steps]
    breakdown = {name: profile_steps(bench.steps[name], steps) for name in wanted}
    erm = bench.trainers["erm"]
    assert bench.batch is not None
    x, y, _ = bench.batch
    return {
        "steps": steps,
        "breakdown": breakdown,
        "unit_costs": unit_costs(copy.deepcopy(erm.model), x, y, reps),
    }


# ----------------------------------------------------------------------------- main


def run_model(
    key: str,
    spec: dict[str, Any],
    rounds: int,
    variants: list[str],
    with_profile: bool,
    profile_steps_n: int = 3,
    reps: int = 10,
) -> dict[str, Any]:
    start = time.perf_counter()
    task = build_task(parse_train_config(run_values(spec, "erm")).data)
    bench = Bench(key, spec, task, variants)
    bench.build()
    rows = time_model(bench, rounds)
    out: dict[str, Any] = {
        "label": spec["label"],
        "model": spec["model"],
        "data": spec["data"],
        "params": bench.params,
        "batch": BATCH,
        "meta_batch": BATCH,
        "rows": rows,
        "ratios": ratios(rows),
        "agreement": agreement(task, spec),
    }
    if with_profile:
        out["profile"] = profile_model(bench, profile_steps_n, reps)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def print_model(key: str, doc: dict[str, Any]) -> None:
    print(f"\n### {doc['label']} ({doc['params']:,} parameters)\n")
    print("| variant | median ms | x ERM | IQR ms | peak MiB | x ERM memory | meta/step |")
    print("|---|---|---|---|---|---|---|")
    for r in doc["rows"]:
        print(
            f"| {r['label']} | {r['median_ms']} | {r['ratio_to_erm']} | {r['iqr_ms']} | "
            f"{r['peak_mib']} | {r['memory_ratio_to_erm']} | {r['meta_steps_per_step']} |"
        )
    a = doc["agreement"]
    print(
        f"\nfloat64 agreement (width {a['width']}): max rel. error {a['max_rel_error']:.2e}; "
        f"layer subset (head) vs exact cosine {a['head_cosine_to_exact']:.4f}"
    )
    print("ratios:", json.dumps(doc["ratios"]))
    if "profile" in doc:
        print("profile:", json.dumps(doc["profile"]))


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MNIST-1D CNN, 8 rounds (< 2 min)")
    parser.add_argument("--rounds", type=int, default=None, help="default 40 (quick: 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile breakdown and unit costs (default: on in a full run, off in --quick)",
    )
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument(
        "--memory-only",
        metavar="JSON",
        help="measure the peak memory again into an earlier run's JSON (no timing)",
    )
    return parser.parse_args(argv)


def refresh_memory(path: str, keys: list[str]) -> None:
    """``--memory-only JSON``: measure the peak memory of every variant of the models in an
    earlier run's JSON again (:func:`step_peaks`; no timing) and rewrite its memory columns
    and ratios."""
    with open(path) as fh:
        report = json.load(fh)
    for key in keys:
        doc = report["models"].get(key)
        if doc is None:
            continue
        task = build_task(parse_train_config(run_values(MODELS[key], "erm")).data)
        bench = Bench(key, MODELS[key], task, [r["variant"] for r in doc["rows"]])
        bench.build()
        peaks = step_peaks(bench)
        base = peaks.get("erm")
        for r in doc["rows"]:
            mib = peaks[r["variant"]]
            r["peak_mib"] = None if mib is None else round(mib, 1)
            r["memory_ratio_to_erm"] = None if mib is None or not base else round(mib / base, 2)
        doc["ratios"] = ratios(doc["rows"])
        print_model(key, doc)
    top = report["ratios_model"]
    if top in report["models"]:
        report.update(report["models"][top]["ratios"])
    report["memory_loadavg"] = loadavg()
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)
        fh.write("\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    rounds = args.rounds or (8 if args.quick else 40)
    if rounds < 1:
        sys.exit("--rounds must be at least 1")
    keys = (
        args.models.split(",") if args.models else (["mnist1d_cnn"] if args.quick else list(MODELS))
    )
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    with_profile = (not args.quick) if args.profile is None else args.profile
    if args.memory_only:
        refresh_memory(args.memory_only, keys)
        return
    load_before = loadavg()
    start = time.perf_counter()
    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for key in keys:
        why = available(MODELS[key])
        if why is not None:
            print(f"skipping {MODELS[key]['label']}: {why}")
            skipped[key] = why
            continue
        models[key] = run_model(key, MODELS[key], rounds, list(VARIANTS), with_profile)
        print_model(key, models[key])
    elapsed = time.perf_counter() - start
    print(f"\ntotal {elapsed:.1f} s")
    top = "fashion_cnn" if "fashion_cnn" in models else next(iter(models), None)
    report = {
        "machine": {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "threads": threads,
            "cores": os.cpu_count(),
            "platform": platform.platform(),
        },
        "quick": args.quick,
        "rounds": rounds,
        "discarded_rounds": min(DISCARD, rounds - 1),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "seconds": round(elapsed, 1),
        "ratios_model": top,
        **(models[top]["ratios"] if top is not None else {}),
        "models": models,
        "skipped": skipped,
        "provenance": provenance(),
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
