"""Architecture search: DARTS on the MNIST-1D cell space, ranked against the true optimum.

    python benchmarks/nas.py [--quick] [--seeds 5] [--threads 1] [--json PATH] [--cache DIR]
        [--parts darts,memory] [--variants NAME,...]

* **darts**: each DARTS variant (:data:`VARIANTS`: order, safeguard, partial channels, epochs)
  searches the 3-node cell space (125 cells) on the ``train`` split of
  ``benchmarks/nas_cells.py`` (the weights on one half, the architecture on the other; the
  table's ``val`` split reports the supernet). The derived cell is looked up in the ground-truth
  table (``results/nas/mnist1d_cells.json``: every cell trained 3 times from scratch), ranked by
  its mean test accuracy there (1 = best of 125; the rank by validation accuracy is reported
  too). Search cost: the search's CPU seconds over those of one training from scratch of the
  table's largest cell (three conv_3 edges, :data:`nas_cells.RECIPE`) in the same process (CPU
  time: a machine loaded by other work inflates wall time unevenly).
* **memory**: peak resident memory above a fresh interpreter's (``VmHWM``), in fresh processes,
  of 4 iterations of DARTS variants against 20 training steps of one discrete cell network, at
  a wider setting (64 channels, batch 256) where activations dominate.
* **cuda_memory** (on a GPU machine): the same probes on CUDA, the peak of torch's allocated
  memory and the seconds per step, at 64 and 256 channels.

Black-box NAS (regularized evolution, TPE, BOHB, NSGA-II on NAS-Bench-201) is
``benchmarks/nas_blackbox.py``; ``benchmarks/report.py`` renders both into one page.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import nas_cells
from common import Cache, base_parser
from slem.methodology.architecture import CellNetwork, Genotype
from slem.train.nas import DartsConfig, DartsSearch, NetworkConfig

RESULTS = Path(__file__).resolve().parent / "results"
#: name -> DartsConfig overrides; every variant runs on the same seeds
VARIANTS: dict[str, dict[str, Any]] = {
    "second order": {"order": "second", "safeguard": "none", "epochs": 10},
    "second order 8 epochs": {"order": "second", "safeguard": "none", "epochs": 8},
    "second order + aux skip": {"order": "second", "safeguard": "aux_skip", "epochs": 10},
    "second order + PC k=4": {
        "order": "second",
        "safeguard": "none",
        "partial_channels": 4,
        "epochs": 10,
    },
    "first order": {"order": "first", "safeguard": "none", "epochs": 20},
    "first order + aux skip": {"order": "first", "safeguard": "aux_skip", "epochs": 20},
    "first order 60 epochs": {"order": "first", "safeguard": "none", "epochs": 60},
    "first order + aux skip 60 epochs": {
        "order": "first",
        "safeguard": "aux_skip",
        "epochs": 60,
    },
}
#: settings every variant shares (DartsConfig fields; the rest are DartsConfig's defaults)
COMMON: dict[str, Any] = {}
REFERENCE = "|conv_3~0|+|conv_3~0|conv_3~1|"  # the table's largest cell


def load_table() -> dict[str, dict[str, Any]]:
    return {c["genotype"]: c for c in json.loads(nas_cells.TABLE.read_text())["cells"]}


def search_data(data: dict[str, Any], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The weights' half and the architecture's half of ``train`` (DARTS' split), and ``val``."""
    x, y = torch.as_tensor(data["x_train"]), torch.as_tensor(data["y_train"])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    a, b = order[: len(y) // 2], order[len(y) // 2 :]
    return [
        (x[a], y[a]),
        (x[b], y[b]),
        (torch.as_tensor(data["x_val"]), torch.as_tensor(data["y_val"])),
    ]


def run_search(overrides: dict[str, Any], seed: int, data: dict[str, Any]) -> dict[str, Any]:
    cfg = DartsConfig(**{**COMMON, **overrides})
    search = DartsSearch(
        cfg, nas_cells.SPACE, NetworkConfig(), search_data(data, seed), 10, seed=seed, device="cpu"
    )
    start, cpu = time.perf_counter(), time.process_time()
    search.fit(progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    genotype = search.mixing.genotype()
    epochs = [r for r in search.history if "epoch" in r]
    return {
        "genotype": str(genotype),
        "skip_share": genotype.skip_share,
        "search_seconds": round(seconds, 2),
        "search_cpu_seconds": round(cpu, 2),
        "supernet_val_accuracy": epochs[-1]["val_accuracy"],
        "weights": epochs[-1]["weights"],
        "genotypes_by_epoch": [r["genotype"] for r in epochs],
    }


def reference_training(data: dict[str, Any], epochs: int) -> dict[str, Any]:
    """One training from scratch of the largest cell, with its CPU seconds (the process's
    CPU time, which a loaded machine does not inflate as it does wall time)."""
    cpu = time.process_time()
    row = nas_cells.train_cell(Genotype.parse(REFERENCE), data, 0, epochs)
    return {**row, "cpu_seconds": round(time.process_time() - cpu, 2)}


def darts_part(cache: Cache, seeds: int, names: list[str], quick: bool) -> dict[str, Any]:
    table = load_table()
    data = nas_cells.splits()
    epochs = 2 if quick else nas_cells.RECIPE["epochs"]
    # one training from scratch, timed here: the unit of search cost (same process, same load)
    ref = cache.run(f"reference-train-{epochs}", lambda: reference_training(data, epochs))
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        overrides = dict(VARIANTS[name], **({"epochs": 1} if quick else {}))
        for seed in range(seeds):
            key = f"darts-{json.dumps({**COMMON, **overrides}, sort_keys=True)}-seed{seed}"
            row = cache.run(key, lambda o=overrides, s=seed: run_search(o, s, data), variant=name)
            cell = table[row["genotype"]]
            rows.setdefault(name, []).append(
                {
                    **row,
                    "seed": seed,
                    "rank_test": cell["rank_test"],
                    "rank_val": cell["rank_val"],
                    "test_acc": cell["test_acc"],
                    "cost": row["search_cpu_seconds"] / ref["cpu_seconds"],
                }
            )
    best = min(table.values(), key=lambda c: c["rank_test"])
    summary = {}
    for name, rs in rows.items():
        ranks = [r["rank_test"] for r in rs]
        summary[name] = {
            "seeds": len(rs),
            "median_rank_test": statistics.median(ranks),
            "ranks_test": ranks,
            "ranks_val": [r["rank_val"] for r in rs],
            "in_top10pct": sum(r <= 12.5 for r in ranks),
            "test_acc_mean": statistics.fmean(r["test_acc"] for r in rs),
            "test_acc_std": statistics.stdev([r["test_acc"] for r in rs]) if len(rs) > 1 else 0.0,
            "skip_share_mean": statistics.fmean(r["skip_share"] for r in rs),
            "cost_mean": statistics.fmean(r["cost"] for r in rs),
            "search_seconds_mean": statistics.fmean(r["search_seconds"] for r in rs),
            "search_cpu_seconds_mean": statistics.fmean(r["search_cpu_seconds"] for r in rs),
            "supernet_val_mean": statistics.fmean(r["supernet_val_accuracy"] for r in rs),
            "genotypes": [r["genotype"] for r in rs],
        }
    accs = sorted((c["test_acc"] for c in table.values()), reverse=True)
    return {
        "settings": {**COMMON, "network": NetworkConfig().model_dump(), "variants": VARIANTS},
        "reference_training_seconds": ref["seconds"],
        "reference_training_cpu_seconds": ref["cpu_seconds"],
        "reference_cell": REFERENCE,
        "table": {
            "cells": len(table),
            "best": best["genotype"],
            "best_test_acc": best["test_acc"],
            "top10pct_cutoff": accs[12],
            "median_test_acc": statistics.median(accs),
            "mean_seed_std": statistics.fmean(c["test_std"] for c in table.values()),
        },
        "variants": summary,
        "runs": rows,
    }


# ------------------------------------------------------------------------------ memory

MEMORY_PROBES = {
    "one network (training)": None,
    **{k: VARIANTS[k] for k in ("second order", "second order + PC k=4", "first order")},
}


def peak_kib() -> int:
    """``VmHWM`` (KiB) of this process: the peak of this address space (``ru_maxrss`` would
    carry the parent's peak across ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no /proc/self/status")


def memory_probe(name: str) -> dict[str, Any]:
    """In this fresh process: 20 training steps of one network, or 4 DARTS iterations, at 64
    channels, batch 256, on random MNIST-1D-shaped data; the peak resident memory above the
    baseline (MiB)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 1, 40, generator=g)
    y = torch.randint(0, 10, (2048,), generator=g)
    warm = CellNetwork(1, 10, genotype=Genotype.parse(REFERENCE), channels=4)
    warm(x[:2]).sum().backward()  # torch's one-time kernels and buffers: not the search's
    base = peak_kib()
    overrides = MEMORY_PROBES[name]
    if overrides is None:
        net = CellNetwork(1, 10, genotype=Genotype.parse(REFERENCE), channels=64)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for i in range(20):
            idx = torch.arange(i * 64, i * 64 + 256) % 2048
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        cfg = DartsConfig(**{**overrides, "epochs": 1, "batch_size": 256})
        data = [(x[:1024], y[:1024]), (x[1024:], y[1024:]), (x[:256], y[:256])]
        search = DartsSearch(
            cfg, nas_cells.SPACE, NetworkConfig(channels=64), data, 10, device="cpu"
        )
        search.on_epoch_start()
        for _ in range(4):  # 4 iterations of a full epoch's batch shape
            search.meta_step()
            search.progress.global_step += 1
    return {"peak_mib": (peak_kib() - base) / 1024}


def cuda_probe(name: str, channels: int = 64, batch: int = 256) -> dict[str, Any]:
    """On CUDA: the peak of torch's allocated memory (MiB) and seconds per iteration of the
    probe ``name`` (as :func:`memory_probe`: 20 training steps, or 4 DARTS iterations)."""
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 40, generator=g)
    y = torch.randint(0, 10, (4096,), generator=g)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    overrides = MEMORY_PROBES[name]
    start = time.perf_counter()
    if overrides is None:
        net = CellNetwork(1, 10, genotype=Genotype.parse(REFERENCE), channels=channels).to(dev)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        xd, yd = x.to(dev), y.to(dev)
        steps = 20
        for i in range(steps):
            idx = torch.arange(i * 64, i * 64 + batch, device=dev) % 4096
            loss = torch.nn.functional.cross_entropy(net(xd[idx]), yd[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        cfg = DartsConfig(**{**overrides, "epochs": 1, "batch_size": batch})
        data = [(x[:2048], y[:2048]), (x[2048:], y[2048:]), (x[:256], y[:256])]
        search = DartsSearch(
            cfg, nas_cells.SPACE, NetworkConfig(channels=channels), data, 10, device="cuda"
        )
        search.on_epoch_start()
        steps = 7
        for _ in range(steps):
            search.meta_step()
            search.progress.global_step += 1
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20, "seconds": seconds}


def cuda_memory_part(channels: int = 64, batch: int = 256) -> dict[str, Any]:
    """:func:`cuda_probe` of every memory probe, one after another in this process (torch's
    allocator counts exactly, so no fresh process is needed), after one warm-up of each."""
    for name in MEMORY_PROBES:
        cuda_probe(name, 8, 16)  # kernels and cuDNN plans: not the runs'
    rows = {name: cuda_probe(name, channels, batch) for name in MEMORY_PROBES}
    base = rows["one network (training)"]["peak_mib"]
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "channels": channels,
        "batch": batch,
        "peak_mib": {k: round(v["peak_mib"], 1) for k, v in rows.items()},
        "ratio_to_one_network": {k: round(v["peak_mib"] / base, 2) for k, v in rows.items()},
        "seconds_per_step": {k: round(v["seconds"], 4) for k, v in rows.items()},
    }


def memory_part(cache: Cache) -> dict[str, Any]:
    out = {}
    for name in MEMORY_PROBES:
        row = cache.run(
            f"memory-{name}",
            lambda n=name: json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--probe", n],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            ),
        )
        out[name] = round(row["peak_mib"], 1)
    base = out["one network (training)"]
    return {
        "peak_mib": out,
        "ratio_to_one_network": {k: round(v / base, 2) for k, v in out.items()},
    }


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", default="darts,memory")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe is not None:
        print(json.dumps(memory_probe(args.probe)))
        return
    cache = Cache(Path(args.cache) if args.cache else RESULTS / "nas" / "darts")
    doc: dict[str, Any] = {}
    parts = args.parts.split(",")
    if "darts" in parts:
        doc["darts"] = darts_part(cache, args.seeds, args.variants.split(","), args.quick)
    if "memory" in parts:
        doc["memory"] = memory_part(cache)
    if "cuda_memory" in parts:  # on a GPU machine: python nas.py --parts cuda_memory
        doc["cuda_memory"] = {
            f"{c} channels, batch {b}": cuda_memory_part(c, b) for c, b in ((64, 256), (256, 256))
        }
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**old, **doc}, indent=1))
    print(json.dumps({k: v.get("variants", v) for k, v in doc.items()}, indent=1))


if __name__ == "__main__":
    main()
