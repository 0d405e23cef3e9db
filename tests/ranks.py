"""Running a function on several gloo ranks in spawned processes (tests of issue 17)."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def _rank_main(
    fn: Callable[..., Any], rank: int, size: int, store: str, out: str, args: tuple[Any, ...]
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        result: Any = ("ok", fn(*args))
    except BaseException as exc:  # reported to the test process, which fails with it
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    finally:
        dist.destroy_process_group()
    torch.save(result, out)


def run_ranks(fn: Callable[..., Any], size: int, tmp: Path, *args: Any) -> list[Any]:
    """``fn(*args)`` on ``size`` gloo ranks (one thread each); every rank's return value.

    ``fn`` must be importable (a module-level function); its results must be picklable."""
    store = tmp / f"store-{os.getpid()}-{id(fn)}-{size}"
    outs = [tmp / f"rank-{r}-{id(fn)}.pt" for r in range(size)]
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_main, args=(fn, r, size, str(store), str(outs[r]), args))
        for r in range(size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    results = []
    for r, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            raise AssertionError(f"rank {r} did not finish")
        status, value = torch.load(outs[r], weights_only=False)
        if status != "ok":
            raise AssertionError(f"rank {r} failed: {value}")
        results.append(value)
    return results
