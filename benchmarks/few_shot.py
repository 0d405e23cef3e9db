"""Few-shot meta-learning on the bilevel engine: sinusoid regression and Omniglot, vectorized
task batches, and memory against the number of inner steps.

    python benchmarks/few_shot.py --threads 1 --json benchmarks/results/few_shot.json
    python benchmarks/few_shot.py --parts omniglot --threads 1 --data-dir ../shared/data/omniglot
    python benchmarks/few_shot.py --parts speed,memory --threads 1

Parts (each resumable from its cache, ``benchmarks/results/few_shot/PART/runs.jsonl``):

* ``sinusoid``: MAML, Meta-SGD, first-order MAML and Reptile on Finn et al.'s sinusoids,
  10-shot, one inner step at meta-test, MSE on 600 new tasks of 100 query points each; the
  selected state is the best on 100 meta-validation tasks.
* ``omniglot``: prototypical networks (meta-trained 20-way 1-shot, 1,000 and 2,500 episodes), MAML
  (5-way 1-shot, 4 tasks per meta step, 1,000 meta steps, one inner step in meta-training,
  three at meta-test), both on the four-block CNN with 32 channels (64 costs 3-4x more on
  these CPUs), meta-trained on ``images_background_small1`` and
  tested on the alphabets of ``images_background_small2`` that small1 lacks: 5-way and 20-way,
  1-shot and 5-shot, 600 episodes each (15 query examples per class 5-way, 5 per class
  20-way), and Lake et al.'s 20 runs of 20-way one-shot.
* ``speed``: one meta step on a task batch, ``vmap`` against the engine's per-task loop and
  against a plain-autograd loop (MAML-style code without torch.func), same process.
* ``memory``: peak resident memory of one meta step against the inner steps, per method, each
  in a fresh process.

Every process gets its thread count (``--threads``); run parts in parallel only with one
thread each.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from common import Cache, base_parser  # type: ignore[import-not-found]
from slem.bilevel import task_hypergrad
from slem.train.few_shot import (
    FewShotConfig,
    FewShotMetaTrainer,
    evaluate,
    lake_error,
    load_pools,
    make_sampler,
)

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "few_shot"

SINUSOID: dict[str, dict[str, Any]] = {
    "maml": {},
    "metasgd": {},
    "fomaml": {},
    "reptile": {"inner_steps": 5, "meta_lr": 1e-3},
}
SINUSOID_BASE = {
    "data": {"source": "sinusoid"},
    "shots": 10,
    "queries": 10,
    "task_batch": 25,
    "inner_lr": 0.01,
    "inner_steps": 1,
    "eval_steps": 1,
    "hidden": 40,
    "meta_lr": 1e-3,
    "val_every": 1000,
    "val_episodes": 100,
    "test_episodes": 600,
}
OMNIGLOT: dict[str, dict[str, Any]] = {
    "protonet": {"ways": 20, "queries": 5, "task_batch": 1, "meta_lr": 1e-3, "hidden": 32},
    "maml": {
        "ways": 5,
        "queries": 5,
        "task_batch": 4,
        "inner_lr": 0.4,
        "inner_steps": 1,
        "eval_steps": 3,
        "meta_lr": 1e-3,
        "hidden": 32,
    },
}
#: the Omniglot rows: a learner and its meta steps (protonet also at 2,500, within 10 minutes)
OMNIGLOT_ROWS = [("protonet", 1000), ("protonet", 2500), ("maml", 1000)]
EVALS = [(5, 1), (5, 5), (20, 1), (20, 5)]


def sinusoid_row(learner: str, seed: int, iterations: int) -> dict[str, Any]:
    cfg = FewShotConfig.model_validate(
        {
            **SINUSOID_BASE,
            **SINUSOID[learner],
            "learner": learner,
            "iterations": iterations,
            "seed": seed,
        }
    )
    meta = FewShotMetaTrainer(cfg, load_pools(cfg.data, seed))
    net = meta.fit(progress=False)
    test = evaluate(net, make_sampler(None, 0, 10, 100, seed + 104729), 600, steps=1)
    return {
        "learner": learner,
        "seed": seed,
        "iterations": iterations,
        "mse": test["mean"],
        "ci95": test["ci95"],
        "selected_iteration": meta.best.get("iteration"),
        "train_seconds": round(meta.elapsed, 1),
        "config": cfg.model_dump(mode="json"),
    }


def omniglot_row(learner: str, seed: int, iterations: int, data_dir: str) -> dict[str, Any]:
    cfg = FewShotConfig.model_validate(
        {
            **OMNIGLOT[learner],
            "learner": learner,
            "data": {"source": "omniglot", "data_dir": data_dir},
            "shots": 1,
            "iterations": iterations,
            "val_every": max(iterations // 10, 1),
            "val_episodes": 100,
            "seed": seed,
        }
    )
    pools = load_pools(cfg.data, seed)
    meta = FewShotMetaTrainer(cfg, pools)
    net = meta.fit(progress=False)
    row: dict[str, Any] = {
        "learner": learner,
        "seed": seed,
        "iterations": iterations,
        "selected_iteration": meta.best.get("iteration"),
        "val_accuracy": meta.best.get("score"),
        "train_seconds": round(meta.elapsed, 1),
        "seconds_per_meta_step": round(meta.elapsed / iterations, 4),
        "config": cfg.model_dump(mode="json"),
    }
    for ways, shots in EVALS:
        if net.kind != "protonet" and ways != cfg.ways:
            continue
        sampler = make_sampler(pools.test, ways, shots, 15 if ways == 5 else 5, seed + 104729)
        score = evaluate(net, sampler, 600, cfg.eval_steps)
        row[f"acc_{ways}w{shots}s"] = score["mean"]
        row[f"ci_{ways}w{shots}s"] = score["ci95"]
    if net.kind == "protonet":
        row["lake_error"] = lake_error(net, cfg.data)
    return row


def engine_step(net: Any, inner: Any, outer: Any, vectorize: bool) -> None:
    """One task-batch hypergradient through the engine."""
    task_hypergrad(
        net.problem(),
        net.method,
        inner_batch=inner,
        outer_batch=outer,
        steps=net.inner_steps,
        vectorize=vectorize,
    )


def autograd_step(net: Any, inner: Any, outer: Any) -> None:
    """The same meta-gradient written as MAML codes usually are: a Python loop over tasks,
    ``torch.autograd.grad(create_graph=True)`` for the inner steps, one backward."""
    params = dict(net.named_parameters())
    tasks = int(inner[0].shape[0])
    total: Any = 0.0
    for b in range(tasks):
        sx, sy = inner[0][b], inner[1][b]
        episode = tuple(t[b] for t in outer)
        fast = dict(params)
        for _ in range(net.inner_steps if net.gradient_based else 0):
            loss = net.task_loss(net.output(fast, sx), sy)
            grads = torch.autograd.grad(
                loss, list(fast.values()), create_graph=net.method == "unrolled"
            )
            fast = {k: v - net.inner_lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
        total = total + net.task_loss(net.query_output(fast, episode), episode[3])
    (total / tasks).backward()
    net.zero_grad(set_to_none=True)


def speed_rows(repeats: int, data_dir: str) -> list[dict[str, Any]]:
    """Seconds per meta step: vmap, the engine's per-task loop, a plain-autograd loop."""
    rows = []
    settings = [
        ("sinusoid maml", {**SINUSOID_BASE, "learner": "maml"}, "mlp"),
        ("sinusoid fomaml", {**SINUSOID_BASE, "learner": "fomaml"}, "mlp"),
        (
            "omniglot maml, 4 tasks",
            {
                **OMNIGLOT["maml"],
                "learner": "maml",
                "data": {"source": "omniglot", "data_dir": data_dir},
            },
            "conv",
        ),
        (
            "omniglot protonet, 8 tasks",
            {
                **OMNIGLOT["protonet"],
                "task_batch": 8,
                "ways": 5,
                "learner": "protonet",
                "data": {"source": "omniglot", "data_dir": data_dir},
            },
            "conv",
        ),
        (
            "omniglot protonet, 16 tasks, 15 queries, 64 channels",
            {
                "learner": "protonet",
                "task_batch": 16,
                "ways": 5,
                "queries": 15,
                "hidden": 64,
                "data": {"source": "omniglot", "data_dir": data_dir},
            },
            "conv",
        ),
    ]
    for name, values, _ in settings:
        cfg = FewShotConfig.model_validate(values)
        meta = FewShotMetaTrainer(cfg, load_pools(cfg.data, 0))
        net = meta.net
        episodes = meta.sampler.sample(cfg.task_batch)
        inner, outer = net.batches(episodes)

        timings: dict[str, float] = {}
        runs: dict[str, Callable[[], None]] = {
            "vmap": partial(engine_step, net, inner, outer, True),
            "engine_loop": partial(engine_step, net, inner, outer, False),
            "autograd_loop": partial(autograd_step, net, inner, outer),
        }
        for label, fn in runs.items():
            fn()  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            timings[label] = (time.perf_counter() - start) / repeats
        rows.append(
            {
                "setting": name,
                "tasks": cfg.task_batch,
                **{f"seconds_{k}": round(v, 5) for k, v in timings.items()},
                "speedup_vs_engine_loop": round(timings["engine_loop"] / timings["vmap"], 2),
                "speedup_vs_autograd_loop": round(timings["autograd_loop"] / timings["vmap"], 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


MEMORY_METHODS = {
    "maml": {"learner": "maml"},
    "maml+checkpoint": {"learner": "maml", "checkpoint": True},
    "fomaml": {"learner": "fomaml"},
    "reptile": {"learner": "reptile"},
    "imaml": {"learner": "imaml"},
}


def peak_rss_kib() -> int:
    """This process's peak resident memory (KiB): ``VmHWM`` of /proc/self/status, which
    belongs to the address space (``ru_maxrss`` survives ``exec`` on Linux, so a child would
    start at its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(method: str, steps: int, data_dir: str) -> dict[str, Any]:
    """One meta step's task-batch hypergradient in this (fresh) process, on random episodes
    of Omniglot's shapes (no data is loaded, so the baseline is the interpreter and torch);
    its peak resident memory above the baseline."""
    from slem.data import Episodes
    from slem.train.few_shot import build_learner

    values = {
        **MEMORY_METHODS[method],
        "data": {"source": "omniglot"},
        "ways": 5,
        "shots": 5,
        "queries": 15,
        "inner_steps": steps,
    }
    cfg = FewShotConfig.model_validate(values)
    net = build_learner(cfg, (1, 28, 28))
    g = torch.Generator().manual_seed(0)
    tasks, labels = 2, torch.arange(5)
    episodes = Episodes(
        torch.rand(tasks, 25, 1, 28, 28, generator=g),
        labels.repeat_interleave(5).expand(tasks, -1),
        torch.rand(tasks, 75, 1, 28, 28, generator=g),
        labels.repeat_interleave(15).expand(tasks, -1),
        5,
    )
    inner, outer = net.batches(episodes)
    base = peak_rss_kib()
    start = time.perf_counter()
    result = task_hypergrad(
        net.problem(),
        net.method,
        inner_batch=inner,
        outer_batch=outer,
        steps=steps,
        vectorize=False,
        checkpoint=cfg.checkpoint,
        **net.hypergrad_options(),
    )
    net.meta_gradient(result)
    seconds = time.perf_counter() - start
    peak = peak_rss_kib()
    return {
        "method": method,
        "steps": steps,
        "extra_mib": round((peak - base) / 1024, 1),
        "seconds": round(seconds, 2),
    }


def memory_rows(data_dir: str, threads: int | None) -> list[dict[str, Any]]:
    rows = []
    for method in MEMORY_METHODS:
        for steps in (1, 5, 10, 20):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-probe",
                    f"{method}:{steps}",
                    "--data-dir",
                    data_dir,
                    "--threads",
                    str(threads or 1),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
            }
    return out


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--parts", default="sinusoid,omniglot,speed,memory")
    parser.add_argument("--learners", default=None, help="comma-separated subset")
    parser.add_argument(
        "--seed-list", default=None, help="comma-separated seeds (instead of 0..--seeds-1)"
    )
    parser.add_argument("--data-dir", default=str(ROOT.parent.parent / "shared/data/omniglot"))
    parser.add_argument("--sinusoid-iterations", type=int, default=10000)
    parser.add_argument("--memory-probe", default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.memory_probe:
        method, steps = args.memory_probe.split(":")
        print(json.dumps(memory_probe(method, int(steps), args.data_dir)))
        return
    parts = args.parts.split(",")
    chosen = args.learners.split(",") if args.learners else None
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else range(args.seeds)
    doc: dict[str, Any] = {}
    if args.json and Path(args.json).is_file():
        doc = json.loads(Path(args.json).read_text())
    if "sinusoid" in parts:
        cache = Cache(RESULTS / "sinusoid")
        iterations = 300 if args.quick else args.sinusoid_iterations
        table = {}
        for learner in SINUSOID:
            if chosen and learner not in chosen:
                continue
            rows = [
                cache.run(
                    f"{learner}/{iterations}/{seed}",
                    partial(sinusoid_row, learner, seed, iterations),
                )
                for seed in seeds
            ]
            table[learner] = {
                "runs": [
                    {k: v for k, v in r.items() if k not in ("config", "provenance")} for r in rows
                ],
                **summarize(rows, ["mse", "train_seconds"]),
            }
        doc["sinusoid"] = {**doc.get("sinusoid", {}), **table}
    if "omniglot" in parts:
        cache = Cache(RESULTS / "omniglot")
        table = {}
        for learner, iterations in OMNIGLOT_ROWS:
            if chosen and learner not in chosen:
                continue
            n = 20 if args.quick else iterations
            rows = [
                cache.run(
                    f"{learner}/{n}/{seed}",
                    partial(omniglot_row, learner, seed, n, args.data_dir),
                )
                for seed in seeds
            ]
            keys = [
                k for k in rows[0] if k.startswith(("acc_", "lake_", "train_sec", "seconds_per"))
            ]
            table[f"{learner}, {n} meta steps"] = {
                "runs": [
                    {k: v for k, v in r.items() if k not in ("config", "provenance")} for r in rows
                ],
                "config": rows[0]["config"],
                **summarize(rows, keys),
            }
        doc["omniglot"] = {**doc.get("omniglot", {}), **table}
    if "speed" in parts:
        doc["speed"] = speed_rows(3 if args.quick else 10, args.data_dir)
    if "memory" in parts:
        doc["memory"] = memory_rows(args.data_dir, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
