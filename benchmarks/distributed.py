"""Scaling meta-training out over torch.distributed ranks (issue 17).

    python benchmarks/distributed.py [--steps 150] [--repeats 3] [--json]

Cross-task meta-training (``slem meta-train``) of the zoo's label-noise rule (CMW-Net over
MNIST-1D and two tables with label noise, ``src/slem/zoo/label-noise/config.yaml``), four
episodes per meta step, on this machine's CPU:

* 1 rank x 1 thread, 1 rank x 2 threads (torch's intra-op threads), 2 ranks x 1 thread
  (gloo; each rank trains two of the four episodes, one all-reduce per meta step).

Throughput is episode steps per second over ``--steps`` meta steps after 70 (past every
episode's meta-learning warm-up epoch), timed inside the processes (rank 0, after a barrier),
so process start-up and data loading are left out; ``--repeats`` runs per setting, median and
range. The ranks run the same episodes as the single process (tasks 0-3 of the family), so
the work is the same. Writes ``benchmarks/results/distributed.json`` with ``--json``; the page
is ``docs/results/distributed.md`` (``python benchmarks/report.py distributed``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "src" / "slem" / "zoo" / "label-noise" / "config.yaml"
OUT = ROOT / "benchmarks" / "results" / "distributed.json"


#: meta steps before the timing starts: past the first epoch (meta-learning's warm-up) of
#: every episode of the family (at most 62 steps: 2000 samples of MNIST-1D in batches of 64)
WARMUP_STEPS = 70


def _cross_task_throughput(steps: int) -> dict[str, Any]:
    """Episode steps per second of ``steps`` meta steps (after the warm-up epoch)."""
    from slem.train.cross_task import CrossTaskTrainer, parse_cross_task_config
    from slem.train.distributed import ranks

    values = yaml.safe_load(CONFIG.read_text())
    trainer = CrossTaskTrainer(parse_cross_task_config(values))
    for _ in range(WARMUP_STEPS):  # the same count on every rank
        trainer.step(None)
    if ranks().active:
        dist.barrier()
    start = time.perf_counter()
    tasks = 0.0
    for _ in range(steps):
        tasks += trainer.step(None).get("tasks", 0.0)
    if ranks().active:
        dist.barrier()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "episode_steps": tasks, "meta_steps": steps}


def _worker(rank: int, size: int, threads: int, store: str, steps: int, out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    result = _cross_task_throughput(steps)
    if size > 1:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def measure(size: int, threads: int, steps: int, scratch: Path, k: int) -> dict[str, Any]:
    """One run on ``size`` spawned processes of ``threads`` threads each."""
    store, out = scratch / f"store-{size}-{threads}-{k}", scratch / f"out-{size}-{threads}-{k}"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(r, size, threads, str(store), steps, str(out)))
        for r in range(size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a rank failed (exit {p.exitcode})")
    result: dict[str, Any] = json.loads(out.read_text())
    result["episode_steps_per_s"] = result["episode_steps"] / result["seconds"]
    return result


SETTINGS = [(1, 1), (1, 2), (2, 1)]  # (ranks, threads per rank)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"slem-distributed-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[float]] = {}
    for k in range(args.repeats):  # interleaved, so a slow spell hits every setting alike
        for size, threads in SETTINGS:
            r = measure(size, threads, args.steps, scratch, k)
            key = f"{size}x{threads}"
            runs.setdefault(key, []).append(r["episode_steps_per_s"])
            print(
                f"{size} rank(s) x {threads} thread(s): {r['episode_steps_per_s']:.1f} "
                "episode steps/s",
                flush=True,
            )
    rows = []
    for key, values in runs.items():
        size, threads = map(int, key.split("x"))
        rows.append(
            {
                "ranks": size,
                "threads": threads,
                "episode_steps_per_s": values,
                "median": statistics.median(values),
            }
        )
    base = {r["ranks"] * 10 + r["threads"]: r["median"] for r in rows}
    summary = {
        "workload": "zoo label-noise (CMW-Net, MNIST-1D + breast_cancer + wine), "
        "4 episodes per meta step",
        "meta_steps": args.steps,
        "repeats": args.repeats,
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "rows": rows,
        "speedup_2ranks_vs_1rank_2threads": base[21] / base[12],
        "speedup_2ranks_vs_1rank_1thread": base[21] / base[11],
    }
    print(f"{'setting':<22}{'median':>10}  runs (episode steps/s)")
    for r in rows:
        setting = f"{r['ranks']} rank x {r['threads']} thread"
        shown = ", ".join(f"{v:.1f}" for v in r["episode_steps_per_s"])
        print(f"{setting:<22}{r['median']:>10.1f}  {shown}")
    print(
        f"2 ranks x 1 thread vs 1 rank x 2 threads: "
        f"{summary['speedup_2ranks_vs_1rank_2threads']:.2f}x"
    )
    if args.json:
        OUT.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
