"""Data-parallel MW-Net on one task: steps per second on 2 ranks x 1 thread against one
process with 2 threads and with 1 thread, on the same global batches.

    python benchmarks/distributed_dp.py [--quick] [--repeats 3] [--steps N] [--cases ...]
        [--json PATH]

Each setting trains MW-Net (case ``mlp256``: an MLP of width 256 on ``digits``, 64 features,
global batch 256, meta batch 100, every step a meta step; ``mlp1024``: width and batch 1024
on MNIST-1D's 40 features as a table) in freshly spawned processes: ranks are started with
``torch.multiprocessing`` and join a gloo process group (no torchrun), each rank takes its part
of every global batch (:meth:`slem.train.Trainer.use_ranks`). After a few untimed steps, the
timed steps run between two barriers; a repeat is one launch, and the settings take turns
across repeats so a slow spell of the machine does not land on one setting only. The table
gives the median steps per second, the spread (min-max) and the speed-up over 1 rank x 1
thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG: dict[str, Any] = {
    "method": "mwnet",
    "data": {"name": "digits", "noise": "symmetric:0.4", "meta_per_class": 10},
    "model": {"arch": "mlp", "width": 256, "depth": 2},
    "optim": {"epochs": 10, "batch_size": 256, "lr": 0.05},
    "meta": {"warmup_epochs": 0, "batch_size": 100},
    "seed": 0,
}
#: the cases: the small MLP above, and four times its width and batch (MNIST-1D as a table)
CASES: dict[str, dict[str, Any]] = {
    "mlp256": CONFIG,
    "mlp1024": {
        **CONFIG,
        "data": {"name": "mnist1d", "size": 6000, "noise": "symmetric:0.4", "meta_per_class": 10},
        "model": {"arch": "mlp", "width": 1024, "depth": 2},
        "optim": {**CONFIG["optim"], "batch_size": 1024},
    },
}
#: (name, ranks, threads per rank)
SETTINGS = (
    ("1 rank x 1 thread", 1, 1),
    ("1 rank x 2 threads", 1, 2),
    ("2 ranks x 1 thread", 2, 1),
)
UNTIMED = 3
#: timed steps per launch, per case (about 1 and 5 seconds on one core)
STEPS = {"mlp256": 60, "mlp1024": 20}


def _worker(
    rank: int, size: int, threads: int, steps: int, case: str, store: str, out: str
) -> None:
    from slem.data import build_task
    from slem.train import make_trainer, parse_train_config
    from slem.train.distributed import ranks

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        cfg = parse_train_config(CASES[case])
        trainer = make_trainer(cfg, build_task(cfg.data))
        trainer.use_ranks(ranks())
        batches = trainer.epoch_steps()

        def run(n: int) -> None:
            for _ in range(n):
                trainer.step(batches[trainer.progress.global_step % len(batches)])
                trainer.progress.global_step += 1

        run(UNTIMED)
        if size > 1:
            dist.barrier()
        start = time.perf_counter()
        run(steps)
        if size > 1:
            dist.barrier()
        seconds = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": seconds, "steps": steps}))
    finally:
        if size > 1:
            dist.destroy_process_group()


def launch(size: int, threads: int, steps: int, case: str) -> float:
    """One launch of ``size`` ranks with ``threads`` threads each on ``case``; its steps
    per second."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = (size, threads, steps, case, str(Path(tmp) / "store"), str(out))
        mp.spawn(_worker, args=args, nprocs=size, join=True)
        result = json.loads(out.read_text())
    return float(result["steps"] / result["seconds"])


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | setting | steps/s (median) | spread (min-max) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b["median"] for b in rows if b["case"] == r["case"])
        lines.append(
            f"| {r['case']} | {r['setting']} | {r['median']:.2f} | "
            f"{min(r['steps_per_s']):.2f}-{max(r['steps_per_s']):.2f} | "
            f"{r['median'] / base:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 5 steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="timed steps per launch (default: per case)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", help="default: benchmarks/results/distributed_dp.json")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    steps = {c: 5 if args.quick else args.steps or STEPS[c] for c in args.cases}
    speeds: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):  # the settings take turns
        for case in args.cases:
            for name, size, threads in SETTINGS:
                speed = launch(size, threads, steps[case], case)
                speeds.setdefault((case, name), []).append(speed)
    rows = [
        {
            "case": case,
            "setting": name,
            "ranks": size,
            "threads_per_rank": threads,
            "steps_per_s": speeds[case, name],
            "median": statistics.median(speeds[case, name]),
        }
        for case in args.cases
        for name, size, threads in SETTINGS
    ]
    print(table(rows))
    doc = {
        "cases": {case: CASES[case] for case in args.cases},
        "timed_steps": steps,
        "repeats": repeats,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "rows": rows,
    }
    target = Path(args.json) if args.json else RESULTS / "distributed_dp.json"
    target.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
