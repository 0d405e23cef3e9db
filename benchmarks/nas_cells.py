"""The ground-truth table of the MNIST-1D cell space: every cell trained from scratch.

    python benchmarks/nas_cells.py [--seeds 3] [--epochs 30] [--workers 1] [--device cpu]
        [--data PATH.npz] [--out benchmarks/results/nas/mnist1d_cells.json]

The space: 3 nodes (3 edges) x NAS-Bench-201's 5 operations (none, skip_connect, conv_1, conv_3,
avg_pool_3) = 125 cells (``slem.methodology.architecture``). Each cell is trained as a
:class:`~slem.methodology.architecture.CellNetwork` (16 channels, 2 stages of 1 cell, the
architecture ``slem train`` builds for ``model.arch: cell``) with one fixed recipe
(:data:`RECIPE`) for ``--seeds`` seeds, and scored on a validation split and on the official test
split. The DARTS benchmark (``benchmarks/nas.py``) ranks the cells it finds by this table; its
search sees only the training split.

Splits (:func:`splits`): MNIST-1D as ``slem`` generates it (10,000 signals, seed 42): the 8,000
training signals are shuffled (seed 0): the first 2,000 are ``train``, the next 2,000 ``val``;
``test`` is the official 2,000. ``--data`` reads those arrays from an ``.npz`` (``--save-data``
writes one), for machines without the ``mnist1d`` package. Results go to a jsonl cache next to
``--out`` first (one line per cell and seed; a rerun skips what it holds), then the table.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slem.methodology.architecture import CellNetwork, CellSpace, Genotype

RESULTS = Path(__file__).resolve().parent / "results" / "nas"
TABLE = RESULTS / "mnist1d_cells.json"
#: the one training recipe of the table (and of ``examples/nas_train_cell.yaml``)
RECIPE: dict[str, Any] = {
    "channels": 16,
    "cells": 1,
    "stages": 2,
    "epochs": 30,
    "batch_size": 128,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
}
SPACE = CellSpace(3)
#: training signals: few enough that the cells differ (6,000 put most of them at 98-99%)
TRAIN = 2000


def splits(data: str | None = None) -> dict[str, np.ndarray]:
    """``x_train (2000, 1, 40)``, ``y_train``, ``x_val (2000, 1, 40)``, ``y_val``, ``x_test
    (2000, 1, 40)``, ``y_test`` (float32 signals, int64 labels)."""
    if data is not None:
        with np.load(data) as f:
            return {k: f[k] for k in f.files}
    from slem.data.sources.mnist1d import load_mnist1d

    ds = load_mnist1d()
    order = np.random.default_rng(0).permutation(len(ds.y))
    x = ds.X.reshape(len(ds.X), 1, -1).astype(np.float32)
    assert ds.X_test is not None and ds.y_test is not None
    x_test = ds.X_test.reshape(len(ds.X_test), 1, -1).astype(np.float32)
    train, val = order[:TRAIN], order[TRAIN : TRAIN + 2000]
    return {
        "x_train": x[train],
        "y_train": ds.y[train].astype(np.int64),
        "x_val": x[val],
        "y_val": ds.y[val].astype(np.int64),
        "x_test": x_test,
        "y_test": ds.y_test.astype(np.int64),
    }


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in percent, eval mode, batches of 1000."""
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
            for i in range(0, len(y), 1000)
        )
    model.train()
    return 100.0 * hits / len(y)


def train_cell(
    genotype: Genotype,
    data: dict[str, np.ndarray],
    seed: int,
    epochs: int = RECIPE["epochs"],
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``genotype`` from scratch with :data:`RECIPE` on ``x_train``; its validation and
    test accuracy (percent), parameters and training seconds."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    t = {k: torch.as_tensor(v, device=dev) for k, v in data.items()}
    model = CellNetwork(
        1,
        10,
        genotype=genotype,
        channels=RECIPE["channels"],
        cells=RECIPE["cells"],
        stages=RECIPE["stages"],
    ).to(dev)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=RECIPE["lr"],
        momentum=RECIPE["momentum"],
        nesterov=True,
        weight_decay=RECIPE["weight_decay"],
    )
    n = len(t["y_train"])
    steps = epochs * math.ceil(n / RECIPE["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(RECIPE["batch_size"]):
            idx = idx.to(dev)
            loss = F.cross_entropy(model(t["x_train"][idx]), t["y_train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "genotype": str(genotype),
        "seed": seed,
        "val_acc": accuracy(model, t["x_val"], t["y_val"]),
        "test_acc": accuracy(model, t["x_test"], t["y_test"]),
        "params": sum(p.numel() for p in model.parameters()),
        "seconds": seconds,
        "epochs": epochs,
        "device": device,
    }


def _worker(args: tuple[list[tuple[str, int]], str | None, int, str, str, int]) -> None:
    jobs, data_path, epochs, device, cache, threads = args
    torch.set_num_threads(threads)
    data = splits(data_path)
    for text, seed in jobs:
        row = train_cell(Genotype.parse(text), data, seed, epochs, device)
        with open(cache, "a") as f:  # one short line per write: appends do not interleave
            f.write(json.dumps(row) + "\n")


def load_rows(cache: Path) -> list[dict[str, Any]]:
    if not cache.exists():
        return []
    return [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell: mean and std of validation and test accuracy over seeds, its rank (1 = best
    mean test accuracy) and parameters."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["genotype"], []).append(r)
    cells = []
    for text, rs in by.items():
        val = [r["val_acc"] for r in rs]
        test = [r["test_acc"] for r in rs]
        cells.append(
            {
                "genotype": text,
                "seeds": len(rs),
                "val_acc": statistics.fmean(val),
                "val_std": statistics.stdev(val) if len(val) > 1 else 0.0,
                "test_acc": statistics.fmean(test),
                "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                "params": rs[0]["params"],
                "seconds": statistics.fmean(r["seconds"] for r in rs),
                "skip_share": Genotype.parse(text).skip_share,
            }
        )
    cells.sort(key=lambda c: -c["test_acc"])
    for rank, c in enumerate(cells, start=1):
        c["rank_test"] = rank
    for rank, c in enumerate(sorted(cells, key=lambda c: -c["val_acc"]), start=1):
        c["rank_val"] = rank
    return {
        "space": SPACE.to_dict(),
        "recipe": RECIPE,
        "splits": "MNIST-1D (slem, 10,000 signals, seed 42): train 2,000 / val 2,000 of the "
        "8,000 training signals (permutation seed 0), test = the official 2,000",
        "cells": cells,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="an .npz of the splits (see --save-data)")
    p.add_argument("--save-data", default=None, help="write the splits to this .npz and stop")
    p.add_argument("--limit", type=int, default=None, help="only the first N cells (a check)")
    p.add_argument("--out", default=str(TABLE))
    args = p.parse_args()
    if args.save_data:
        np.savez_compressed(args.save_data, **splits())
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.with_suffix(".jsonl")
    done = {(r["genotype"], r["seed"]) for r in load_rows(cache)}
    cells = [str(g) for g in SPACE.genotypes()][: args.limit]
    jobs = [(c, s) for s in range(args.seeds) for c in cells if (c, s) not in done]
    print(f"{len(jobs)} trainings to run ({len(done)} cached) on {args.workers} worker(s)")
    start = time.perf_counter()
    if jobs:
        shards = [jobs[i :: args.workers] for i in range(args.workers)]
        work = [
            (s, args.data, args.epochs, args.device, str(cache), args.threads) for s in shards if s
        ]
        if args.workers == 1:
            _worker(work[0])
        else:
            with mp.get_context("spawn").Pool(len(work)) as pool:
                pool.map(_worker, work)
    print(f"{time.perf_counter() - start:.0f} s")
    result = table(load_rows(cache))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    best = result["cells"][:5]
    for c in best:
        print(f"{c['genotype']:45s} val {c['val_acc']:.2f} test {c['test_acc']:.2f}")


if __name__ == "__main__":
    main()
