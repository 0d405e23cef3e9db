"""Scaling meta-training out over torch.distributed ranks (issue 17).

    python benchmarks/distributed.py [--steps 150] [--repeats 3] [--json]

Cross-task meta-training (``slem meta-train``) of the zoo's label-noise rule (CMW-Net over
MNIST-1D and two tables with label noise, ``src/slem/zoo/label-noise/config.yaml``), and of
the same rule over MNIST-1D alone (``--families``), four episodes per meta step, on this
machine's CPU:

* 1 rank x 1 thread, 1 rank x 2 threads (torch's intra-op threads), 2 ranks x 1 thread
  (gloo; each rank trains two of the four episodes, one all-reduce per meta step);
* 2 independent processes x 1 thread, each on two episodes without a process group: the
  machine's own ceiling for two processes that share no work.

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


def family(name: str) -> dict[str, Any]:
    """The zoo's label-noise config (``zoo``), or the same on MNIST-1D alone (``mnist1d``:
    every episode the same size, with long epochs)."""
    values: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    if name == "mnist1d":
        values["tasks"]["datasets"] = ["mnist1d"]
    return values


def _cross_task_throughput(
    steps: int, family_name: str = "zoo", tasks_per_step: int = 4
) -> dict[str, Any]:
    """Episode steps per second of ``steps`` meta steps (after the warm-up epoch)."""
    from slem.train.cross_task import CrossTaskTrainer, parse_cross_task_config
    from slem.train.distributed import ranks

    values = {**family(family_name), "tasks_per_step": tasks_per_step}
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


def _worker(
    rank: int,
    size: int,
    threads: int,
    store: str,
    steps: int,
    out: str,
    family_name: str,
    independent: bool,
) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    if independent:  # no process group: each process alone on its share of the episodes
        result = _cross_task_throughput(steps, family_name, 4 // size)
        Path(f"{out}.{rank}").write_text(json.dumps(result))
        return
    if size > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    result = _cross_task_throughput(steps, family_name)
    if size > 1:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def measure(
    size: int,
    threads: int,
    steps: int,
    scratch: Path,
    k: int,
    family_name: str,
    independent: bool = False,
) -> dict[str, Any]:
    """One run on ``size`` spawned processes of ``threads`` threads each (``independent``:
    without a process group, each on ``4 / size`` episodes: the machine's ceiling for
    ``size`` processes that share no work)."""
    tag = f"{family_name}-{size}-{threads}-{k}-{int(independent)}"
    store, out = scratch / f"store-{tag}", scratch / f"out-{tag}"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, size, threads, str(store), steps, str(out), family_name, independent),
        )
        for r in range(size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a rank failed (exit {p.exitcode})")
    if independent:
        parts = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(size)]
        tasks, seconds = sum(p["episode_steps"] for p in parts), max(p["seconds"] for p in parts)
        return {"episode_steps": tasks, "seconds": seconds, "episode_steps_per_s": tasks / seconds}
    result: dict[str, Any] = json.loads(out.read_text())
    result["episode_steps_per_s"] = result["episode_steps"] / result["seconds"]
    return result


#: (processes, threads per process, independent: no process group, half the episodes each)
SETTINGS = [(1, 1, False), (1, 2, False), (2, 1, False), (2, 1, True)]
WORKLOADS = {
    "zoo": "the zoo's label-noise family (CMW-Net, width 256; the first four episodes are "
    "wine and breast_cancer tables, an epoch of one or a few steps)",
    "mnist1d": "the same on MNIST-1D alone (every episode 2,000 or 4,000 samples, "
    "31-62 steps per epoch)",
}


def summarize(runs: dict[str, list[float]]) -> dict[str, Any]:
    rows = []
    for key, values in runs.items():
        size, threads, independent = map(int, key.split("x"))
        rows.append(
            {
                "ranks": size,
                "threads": threads,
                "independent": bool(independent),
                "episode_steps_per_s": values,
                "median": statistics.median(values),
            }
        )
    median = {(r["ranks"], r["threads"], r["independent"]): r["median"] for r in rows}
    return {
        "rows": rows,
        "speedup_2ranks_vs_1rank_2threads": median[2, 1, False] / median[1, 2, False],
        "speedup_2ranks_vs_1rank_1thread": median[2, 1, False] / median[1, 1, False],
        "ceiling_2_independent_vs_1rank_1thread": median[2, 1, True] / median[1, 1, False],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--json", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"slem-distributed-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in args.families}
    for k in range(args.repeats):  # interleaved, so a slow spell hits every setting alike
        for name in args.families:
            for size, threads, independent in SETTINGS:
                r = measure(size, threads, args.steps, scratch, k, name, independent)
                key = f"{size}x{threads}x{int(independent)}"
                runs[name].setdefault(key, []).append(r["episode_steps_per_s"])
                print(
                    f"{name}: {size} {'independent ' if independent else ''}process(es) x "
                    f"{threads} thread(s): "
                    f"{r['episode_steps_per_s']:.1f} episode steps/s",
                    flush=True,
                )
    summary: dict[str, Any] = {
        "tasks_per_step": 4,
        "meta_steps": args.steps,
        "repeats": args.repeats,
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "families": {
            name: {"workload": WORKLOADS[name], **summarize(runs[name])} for name in args.families
        },
    }
    for name, fam in summary["families"].items():
        print(f"\n{name}: {fam['workload']}")
        print(f"{'setting':<22}{'median':>10}  runs (episode steps/s)")
        for r in fam["rows"]:
            setting = f"{r['ranks']} {'alone' if r['independent'] else 'rank'} x {r['threads']}"
            shown = ", ".join(f"{v:.1f}" for v in r["episode_steps_per_s"])
            print(f"{setting:<22}{r['median']:>10.1f}  {shown}")
        print(
            "2 ranks x 1 thread vs 1 rank x 2 threads: "
            f"{fam['speedup_2ranks_vs_1rank_2threads']:.2f}x; two processes sharing nothing "
            f"vs one: {fam['ceiling_2_independent_vs_1rank_1thread']:.2f}x"
        )
    if args.json:
        OUT.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
