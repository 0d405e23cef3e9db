"""The fast mode of the sample-weighting meta step (``meta.scope: head``) against the exact one
(``meta.scope: model``): its hypergradient's bias along a run, and its accuracy.

    python benchmarks/fast_mode.py [--quick] [--json PATH] [--cache DIR] [--seeds 3]
        [--jobs 2] [--bias-only | --accuracy-only] [--no-fashion] [--fashion-seeds 1]
        [--variants exact,fast,...]

1. Bias: MW-Net trained with ``meta.scope: head`` on the noisy-label grid's configuration
   (``noisy_labels.run_config``: MNIST-1D, and Fashion-MNIST when installed, 40% symmetric
   noise, seed 0). At every meta step, on the same state, training batch and meta batch
   (drawn once from the trainer's generator), the exact whole-model hypergradient is computed
   too, before the real step (functionally: BatchNorm statistics move once per step, in the
   real step); the run itself follows the fast mode and is the plain fast-mode run. Per
   epoch: median and minimum cosine ``cos(g_head, g_exact)``, median and maximum relative
   error ``|g_head - g_exact| / |g_exact|``, median norm ratio ``|g_head| / |g_exact|``.
   Also: both norms, and the norm of the meta optimizer's weight decay term.
2. Accuracy: the grid's quick subset (MNIST-1D, 40% symmetric noise, 30 epochs), MW-Net
   exact, fast, fast with a meta step every 2 steps (``meta.interval: 2``), fast without the
   meta optimizer's weight decay (``meta.weight_decay: 0``), and ERM, ``--seeds`` seeds:
   final test accuracy and test accuracy at the best-validation epoch, mean ± std, the
   per-seed paired difference to exact, and per epoch the learned weights' mean on truly
   noisy over truly clean samples. ``--jobs N`` runs N trainings at
   once, one thread each; finished runs are kept in ``CACHE/runs.jsonl`` (resumable).

``--quick``: MNIST-1D only, 2 epochs of bias (the warm-up and one meta epoch), the accuracy
variants for 2 epochs on one seed (about 2 minutes); its JSON and cache go to a temporary
directory unless ``--json`` / ``--cache`` are given. ``--fashion-seeds N``: the accuracy
variants on Fashion-MNIST too (default 1 seed; 0: none).
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
    "fast": ("MW-Net", {"scope": "head"}),
    "fast + interval 2": ("MW-Net", {"scope": "head", "interval": 2}),
    # the head's hypergradient is 6-300x smaller than the whole model's, below the meta
    # optimizer's (coupled, Adam) weight decay term: the fast mode without it
    "fast + meta wd 0": ("MW-Net", {"scope": "head", "weight_decay": 0.0}),
    # the control: what the same change does to the exact mode
    "exact + meta wd 0": ("MW-Net", {"weight_decay": 0.0}),
    # without weight decay the fast mode learns a non-monotone rule (a bump at medium losses):
    # the rule constrained non-increasing in the loss (meta.monotone)
    "fast + monotone": ("MW-Net", {"scope": "head", "monotone": True}),
    "fast + monotone + meta wd 0": (
        "MW-Net",
        {"scope": "head", "monotone": True, "weight_decay": 0.0},
    ),
    "ERM": ("ERM", {}),
}
#: the variants also run on Fashion-MNIST
FASHION_VARIANTS = ("exact", "fast", "fast + meta wd 0", "fast + monotone + meta wd 0", "ERM")
#: the variants compared with exact seed by seed
PAIRED = tuple(v for v in VARIANTS if v not in ("exact", "ERM"))


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


def accuracy(
    cache: Cache,
    seeds: int,
    epochs: int,
    jobs: int,
    variants: tuple[str, ...] = tuple(VARIANTS),
    dataset: str = "mnist1d",
) -> list[dict[str, Any]]:
    """The accuracy runs on ``dataset`` (cached; ``jobs`` at once), seed by seed."""
    todo = [(v, s, variant_config(v, s, epochs, dataset)) for s in range(seeds) for v in variants]
    missing = [(v, s, c) for v, s, c in todo if accuracy_key(c) not in cache.rows]

    def store(v: str, s: int, c: TrainConfig, fn: Callable[[], dict[str, Any]]) -> None:
        cache.run(accuracy_key(c), fn, variant=v, seed=s, epochs=epochs, dataset=dataset)

    if jobs > 1 and len(missing) > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [
                (v, s, c, pool.submit(train_one, c.model_dump(mode="json"))) for v, s, c in missing
            ]
            for v, s, c, fut in futures:
                store(v, s, c, fut.result)
    else:
        for v, s, c in missing:
            store(v, s, c, lambda c=c: train_one(c.model_dump(mode="json")))
    return [{**cache.rows[accuracy_key(c)], "variant": v, "seed": s} for v, s, c in todo]


def _stat(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "mean": statistics.mean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def accuracy_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: mean ± std of both accuracies and the meta step time ratio; per paired
    variant and seed: the difference to exact, and its mean ± std."""
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
        last = [r["weights"][-1]["noisy_over_clean"] for r in rs if r.get("weights")]
        row["noisy_over_clean"] = _stat(last)
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
    return {"table": table, "paired": paired}


# ----------------------------------------------------------------------------- diagnosis

#: the losses at which :class:`Diagnosis` evaluates the learned rule
LOSS_GRID = (0.05, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0)
#: the variants diagnosed epoch by epoch (seed 0)
DIAGNOSED = ("exact", "fast", "fast + meta wd 0")


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
    parser.add_argument("--jobs", type=int, default=1, help="accuracy runs at once (1 thread)")
    parser.add_argument("--bias-only", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="accuracy variants, comma-separated"
    )
    parser.add_argument("--no-fashion", action="store_true", help="bias on MNIST-1D only")
    parser.add_argument(
        "--diagnose", action="store_true", help="per-epoch diagnosis of exact, fast, fast wd 0"
    )
    parser.add_argument(
        "--fashion-seeds", type=int, default=1, help="accuracy seeds on Fashion-MNIST (0: none)"
    )
    parser.add_argument(
        "--fashion-epochs", type=int, default=None, help="bias run on Fashion-MNIST (default 20)"
    )
    args = parser.parse_args()
    # --quick never touches the committed results: a temporary JSON and cache unless given
    scratch = Path(tempfile.mkdtemp(prefix="slem-fast-mode-")) if args.quick else None
    default_json = scratch / "fast_mode.json" if scratch else RESULTS / "fast_mode.json"
    target = Path(args.json) if args.json else default_json
    cache_dir = Path(args.cache) if args.cache else None
    cache_dir = cache_dir or (scratch / "cache" if scratch else RESULTS / "fast_mode")
    out: dict[str, Any] = json.loads(target.read_text()) if target.is_file() else {}
    out["quick"] = args.quick
    if not args.accuracy_only:
        out["bias"] = []
        datasets = ["mnist1d"]
        if not (args.quick or args.no_fashion) and find_dir() is not None:
            datasets.append("fashion-mnist")
        for dataset in datasets:
            epochs = 2 if args.quick else int(DATASETS[dataset]["epochs"])
            if dataset == "fashion-mnist" and args.fashion_epochs:
                epochs = args.fashion_epochs
            cfg = run_config(dataset, "sym40", "MW-Net", 0, epochs)
            result = bias_run(cfg)
            steps = result.pop("steps")
            cos = [s["cosine"] for s in steps]
            err = [s["rel_error"] for s in steps]
            entry = {
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
            assert all(math.isfinite(c) for c in cos)
            out["bias"].append(entry)
            for row in result["per_epoch"]:
                print(json.dumps({"dataset": dataset, **row}), flush=True)
            target.write_text(json.dumps(out, indent=1))
    if not args.bias_only:
        cache = Cache(cache_dir)
        variants = tuple(args.variants.split(","))
        for v in variants:
            if v not in VARIANTS:
                parser.error(f"unknown variant '{v}'; choose from {', '.join(VARIANTS)}")
        plan = [("mnist1d", 1 if args.quick else args.seeds, "accuracy", variants)]
        if not args.quick and args.fashion_seeds and find_dir() is not None:
            others = tuple(v for v in variants if v in FASHION_VARIANTS)
            plan.append(("fashion-mnist", args.fashion_seeds, "accuracy_fashion", others))
        for dataset, seeds, name, chosen in plan:
            epochs = 2 if args.quick else int(DATASETS[dataset]["epochs"])
            rows = accuracy(cache, seeds, epochs, args.jobs, chosen, dataset)
            out[name] = accuracy_block(dataset, epochs, rows)
            print(json.dumps(out[name]["paired"], indent=1))
            target.write_text(json.dumps(out, indent=1))
    if args.diagnose:
        cache = Cache(cache_dir)
        epochs = 2 if args.quick else int(DATASETS["mnist1d"]["epochs"])
        out["diagnosis"] = []
        for v in DIAGNOSED:
            cfg = variant_config(v, 0, epochs)
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
