"""Transferable learning-rate schedules: MLR-SNet against tuned hand-designed schedules.

    python benchmarks/schedules.py [--quick] [--json PATH] [--cache DIR] [--seeds 3]

Meta-training: MLR-SNet on an MLP on MNIST-1D (with its held-out meta set), once. Transfer:
the frozen schedule drives momentum SGD on each target (other architectures, datasets and
epoch budgets) with no tuning. Baselines: constant, step, cosine and one-cycle schedules for
the same SGD and Adam (constant rate), each with its rate chosen per target by a grid on the
validation split (final-epoch validation accuracy, seed 0). The reported number is the final
epoch's test accuracy, mean and std over seeds; ``tuning_runs`` counts the runs each method's
tuning needed on the target (MLR-SNet's one meta-training run is shared by all targets).

Runs are cached in ``CACHE/runs.jsonl`` (resumable). ``--quick``: a 10-epoch meta-training,
one target, the cosine schedule on a 2-point grid, one seed (well under 5 minutes on 2 cores).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Cache, accuracy_table, base_parser, summarize, train, tuned_runs
from slem.data import build_task
from slem.data.sources.fashion_mnist import find_dir
from slem.methodology import load_methodology
from slem.train import make_trainer, parse_train_config
from slem.train.artifacts import save_methodology

SOURCE: dict[str, Any] = {
    "data": {"name": "mnist1d", "meta_per_class": 50},
    "model": {"arch": "mlp", "width": 128, "depth": 2},
    "epochs": 30,
}
TARGETS: dict[str, dict[str, Any]] = {
    "mnist1d / cnn1d / 15 ep": {
        "data": {"name": "mnist1d"},
        "model": {"arch": "cnn1d", "width": 32},
        "epochs": 15,
    },
    "mnist1d / cnn1d / 40 ep": {
        "data": {"name": "mnist1d"},
        "model": {"arch": "cnn1d", "width": 32},
        "epochs": 40,
    },
    "fashion-mnist (8k) / cnn2d / 10 ep": {
        "data": {"name": "fashion-mnist", "size": 8000},
        "model": {"arch": "cnn2d", "width": 16},
        "epochs": 10,
    },
    "digits / mlp / 30 ep": {
        "data": {"name": "digits"},
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "epochs": 30,
    },
}
SGD_GRID = [0.01, 0.03, 0.1, 0.3]
ADAM_GRID = [3e-4, 1e-3, 3e-3, 1e-2]
#: method -> (optimizer, schedule, grid)
HAND: dict[str, tuple[str, str, list[float]]] = {
    "SGD constant": ("sgd", "constant", SGD_GRID),
    "SGD step": ("sgd", "step", SGD_GRID),
    "SGD cosine": ("sgd", "cosine", SGD_GRID),
    "SGD one-cycle": ("sgd", "onecycle", SGD_GRID),
    "Adam": ("adam", "constant", ADAM_GRID),
}
LEARNED = "MLR-SNet (transferred)"
MOMENTUM, WEIGHT_DECAY, BATCH = 0.9, 5e-4, 128


def target_config(target: str, seed: int, **optim: Any) -> Any:
    spec = TARGETS[target]
    return {
        "method": "erm",
        "data": {**spec["data"], "seed": seed},
        "model": spec["model"],
        "optim": {
            "epochs": spec["epochs"],
            "batch_size": BATCH,
            "momentum": MOMENTUM,
            "weight_decay": WEIGHT_DECAY,
            **optim,
        },
        "seed": seed,
    }


def source_config(epochs: int) -> Any:
    return parse_train_config(
        {
            "method": "lr_schedule",
            "data": SOURCE["data"],
            "model": SOURCE["model"],
            "optim": {
                "epochs": epochs,
                "batch_size": BATCH,
                "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY,
            },
            "seed": 0,
        }
    )


def meta_train(cache: Cache, artifacts: Path, epochs: int) -> Path:
    path = artifacts / f"mlrsnet-mnist1d-mlp-{epochs}ep"
    if not (path / "methodology.json").is_file():
        cfg = source_config(epochs)
        task = build_task(cfg.data)
        trainer = make_trainer(cfg, task)
        start = time.perf_counter()
        s = trainer.fit(progress=False).summary
        assert trainer.methodology is not None
        save_methodology(
            trainer.methodology,
            path,
            cfg,
            task,
            trained_on={"model": "mlp", "epochs": epochs, "seed": cfg.seed},
        )
        cache.rows.pop(f"source|{epochs}", None)
        cache.run(
            f"source|{epochs}",
            lambda: {
                "test_accuracy": s["test_accuracy"],
                "meta_step_time_ratio": s["meta_step_time_ratio"],
                "train_seconds": round(time.perf_counter() - start, 1),
            },
            target="source: mnist1d / mlp",
            method="MLR-SNet (meta-training)",
            seed=0,
            tuning_runs=0,
        )
    return path


def evaluate_target(
    cache: Cache, target: str, methods: list[str], seeds: int, artifact: Path
) -> list[dict[str, Any]]:
    rows = []
    tag = f"{target}|{TARGETS[target]['epochs']}"
    for method in methods:
        if method == LEARNED:
            frozen, _ = load_methodology(artifact)
            for p in frozen.parameters():
                p.requires_grad_(False)
            for seed in range(seeds):
                values = target_config(target, seed)
                values.update(method="apply", methodology=str(artifact))
                rows.append(
                    cache.run(
                        f"{tag}|{method}|{artifact.name}|{seed}",
                        lambda v=values, m=frozen: train(v, m),
                        target=target,
                        method=method,
                        seed=seed,
                        tuning_runs=0,
                    )
                )
            continue
        optimizer, schedule, grid = HAND[method]

        def values_at(lr: float, seed: int, opt: str = optimizer, sch: str = schedule) -> Any:
            return target_config(target, seed, optimizer=opt, schedule=sch, lr=lr)

        rows += tuned_runs(cache, tag, target, method, grid, values_at, seeds)
    return rows


def plot_traces(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The learned rate on each target (seed 0) against the tuned cosine schedule."""
    import matplotlib.pyplot as plt
    import numpy as np

    from slem.report.plots import save_figure

    paths = []
    for target in dict.fromkeys(r["target"] for r in rows):
        learned = [r for r in rows if r["target"] == target and r["method"] == LEARNED]
        cosine = [r for r in rows if r["target"] == target and r["method"] == "SGD cosine"]
        if not learned or "lr_trace" not in learned[0]:
            continue
        trace = learned[0]["lr_trace"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = np.linspace(0, 1, len(trace))
        ax.plot(x, trace, label="MLR-SNet (transferred, no tuning)")
        if cosine:
            lr0 = cosine[0]["chosen_lr"]
            ax.plot(x, lr0 * 0.5 * (1 + np.cos(np.pi * x)), "--", label=f"cosine, tuned {lr0:g}")
        ax.set_xlabel("fraction of training")
        ax.set_ylabel("learning rate")
        ax.set_title(target, fontsize=10)
        ax.legend()
        name = target.replace(" / ", "_").replace(" ", "").replace("(", "").replace(")", "")
        paths.append(save_figure(fig, out / f"lr_{name}.png", dpi=100))
    return paths


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--methods", default=",".join([*HAND, LEARNED]))
    parser.add_argument("--meta-epochs", type=int, default=SOURCE["epochs"])
    args = parser.parse_args()
    targets, methods = args.targets.split(","), args.methods.split(",")
    if args.quick:
        targets, methods, args.seeds, args.meta_epochs = (
            ["mnist1d / cnn1d / 15 ep"],
            ["SGD cosine", LEARNED],
            1,
            10,
        )
        HAND["SGD cosine"] = ("sgd", "cosine", [0.03, 0.1])
    for name in targets:
        if name not in TARGETS:
            parser.error(f"unknown target '{name}'; choose from {', '.join(TARGETS)}")
    for name in methods:
        if name not in HAND and name != LEARNED:
            parser.error(f"unknown method '{name}'; choose from {', '.join([*HAND, LEARNED])}")
    cache_dir = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="slem-sched-"))
    cache = Cache(cache_dir)
    start = time.perf_counter()
    artifact = meta_train(cache, cache_dir / "artifacts", args.meta_epochs)
    rows: list[dict[str, Any]] = []
    for target in targets:
        if TARGETS[target]["data"]["name"] == "fashion-mnist" and find_dir() is None:
            print(f"skipping {target}: Fashion-MNIST files not installed")
            continue
        rows += evaluate_target(cache, target, methods, args.seeds, artifact)
    summary = summarize(rows)
    print(accuracy_table(summary))
    plots = plot_traces(rows, cache_dir)
    print(f"total {time.perf_counter() - start:.0f} s; cache {cache.file}; plots {plots}")
    if args.json:
        keep = ("target", "method", "seed", "test_accuracy", "tuning_runs", "chosen_lr")
        Path(args.json).write_text(
            json.dumps(
                {
                    "results": [{k: r.get(k) for k in keep} for r in rows],
                    "summary": summary,
                    "meta_training": cache.rows.get(f"source|{args.meta_epochs}"),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
