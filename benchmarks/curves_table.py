"""A table of MNIST-1D learning curves (issue 22): 300 configurations of the reference 1-D CNN,
30 epochs each, every epoch's validation accuracy and loss recorded.

    python benchmarks/curves_table.py [--configs 300] [--epochs 30] [--workers 1] [--threads 1]
        [--data PATH.npz] [--out benchmarks/results/curves/mnist1d_curves.json]

The data for learning-curve extrapolation and for comparing pruners at equal budget without
training anything: each row is one configuration (:func:`configurations`, drawn once from a
fixed seed: learning rate log-uniform in [1e-3, 1], weight decay log-uniform in [1e-6, 1e-2],
width in {8, 16, 32, 64}, batch size in {32, 64, 128, 256}, momentum in {0, 0.9}, schedule
constant or cosine) trained with SGD by :func:`train_curve` on the 2,000 MNIST-1D training
signals of ``benchmarks/nas_cells.py`` (``splits``), scored after every epoch on its 2,000
validation signals and, at the end, on the official 2,000 test signals. The model is
``slem.train.models.cnn1d`` (what ``slem train`` builds for ``model.arch: cnn1d``).

Results go to a jsonl cache next to ``--out`` first (one line per configuration; a rerun skips
what it holds), then the table. ``--data`` reads the splits from an ``.npz``
(``nas_cells.py --save-data`` writes one), for machines without the ``mnist1d`` package.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import nas_cells
from slem.train.models import cnn1d

RESULTS = Path(__file__).resolve().parent / "results" / "curves"
TABLE = RESULTS / "mnist1d_curves.json"
WIDTHS = (8, 16, 32, 64)
BATCHES = (32, 64, 128, 256)


def configurations(n: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` configurations drawn once from ``seed`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        out.append(
            {
                "config": k,
                "lr": float(10 ** rng.uniform(-3, 0)),
                "weight_decay": float(10 ** rng.uniform(-6, -2)),
                "width": int(rng.choice(WIDTHS)),
                "batch_size": int(rng.choice(BATCHES)),
                "momentum": float(rng.choice([0.0, 0.9])),
                "schedule": str(rng.choice(["constant", "cosine"])),
            }
        )
    return out


def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy in percent, mean cross-entropy) in eval mode."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 1000]) for i in range(0, len(y), 1000)])
    model.train()
    loss = float(F.cross_entropy(logits, y))
    return 100.0 * float((logits.argmax(1) == y).float().mean()), loss if math.isfinite(
        loss
    ) else 1e9


def train_curve(cfg: dict[str, Any], data: dict[str, np.ndarray], epochs: int) -> dict[str, Any]:
    """Train one configuration for ``epochs`` epochs; its per-epoch curves and final test
    accuracy. A diverged run (non-finite loss) keeps its curve with chance-level values."""
    torch.manual_seed(cfg["config"])
    t = {k: torch.as_tensor(v) for k, v in data.items()}
    model = cnn1d(1, 10, cfg["width"])
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )
    n = len(t["y_train"])
    steps = epochs * math.ceil(n / cfg["batch_size"])
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        if cfg["schedule"] == "cosine"
        else None
    )
    gen = torch.Generator().manual_seed(cfg["config"])
    curve: dict[str, list[float]] = {"val_acc": [], "val_loss": [], "train_loss": []}
    start = time.perf_counter()
    diverged = False
    for _ in range(epochs):
        total, count = 0.0, 0
        if not diverged:
            for idx in torch.randperm(n, generator=gen).split(cfg["batch_size"]):
                loss = F.cross_entropy(model(t["x_train"][idx]), t["y_train"][idx])
                if not torch.isfinite(loss):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += loss.item() * len(idx)
                count += len(idx)
        if diverged:
            curve["val_acc"].append(10.0)
            curve["val_loss"].append(1e9)
            curve["train_loss"].append(1e9)
            continue
        acc, vloss = _evaluate(model, t["x_val"], t["y_val"])
        curve["val_acc"].append(round(acc, 3))
        curve["val_loss"].append(round(vloss, 5))
        curve["train_loss"].append(round(total / max(count, 1), 5))
    test = 10.0 if diverged else _evaluate(model, t["x_test"], t["y_test"])[0]
    return {
        **cfg,
        **curve,
        "test_acc": round(test, 3),
        "diverged": diverged,
        "seconds": round(time.perf_counter() - start, 2),
        "epochs": epochs,
    }


def _worker(args: tuple[list[dict[str, Any]], str | None, int, str, int]) -> None:
    jobs, data_path, epochs, cache, threads = args
    torch.set_num_threads(threads)
    data = nas_cells.splits(data_path)
    for cfg in jobs:
        row = train_curve(cfg, data, epochs)
        with open(cache, "a") as f:  # one line per write: appends do not interleave
            f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=int, default=300)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--data", default=None, help="an .npz of the splits (nas_cells.py)")
    p.add_argument("--out", default=str(TABLE))
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.with_suffix(".jsonl")
    rows = [json.loads(x) for x in cache.read_text().splitlines()] if cache.exists() else []
    done = {r["config"] for r in rows}
    jobs = [c for c in configurations(args.configs) if c["config"] not in done]
    print(f"{len(jobs)} configurations to train ({len(done)} cached), {args.workers} worker(s)")
    start = time.perf_counter()
    if jobs:
        # the slowest first (wide and small batches), so the workers end together
        jobs.sort(key=lambda c: -c["width"] / c["batch_size"])
        shards = [jobs[i :: args.workers] for i in range(args.workers)]
        work = [(s, args.data, args.epochs, str(cache), args.threads) for s in shards if s]
        if len(work) == 1:
            _worker(work[0])
        else:
            with mp.get_context("spawn").Pool(len(work)) as pool:
                pool.map(_worker, work)
    print(f"{time.perf_counter() - start:.0f} s")
    rows = [json.loads(x) for x in cache.read_text().splitlines()]
    rows.sort(key=lambda r: r["config"])
    table = {
        "model": "slem.train.models.cnn1d",
        "splits": "MNIST-1D as benchmarks/nas_cells.py: train 2,000, val 2,000, test 2,000",
        "epochs": args.epochs,
        "configurations": rows,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, out)
    best = max(rows, key=lambda r: r["val_acc"][-1])
    final = best["val_acc"][-1]
    print(f"{len(rows)} curves; best final val acc {final:.2f} (config {best['config']})")


if __name__ == "__main__":
    main()
