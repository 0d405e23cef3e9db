"""Running a command on several ranks: ``--nproc`` starts torchrun on this machine, and a
command started by torchrun joins its process group, takes its run directory from rank 0 and
resumes by itself after an elastic restart.

On one machine ``slem meta-train CONFIG --nproc 2 --out DIR`` is
``torchrun --standalone --nproc-per-node 2 -m slem meta-train CONFIG --out DIR``. On several
machines run torchrun on each (same ``--rdzv-endpoint``, ``--rdzv-id`` and ``--nnodes``)::

    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1   # for --max-restarts (pytorch#135712)
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id RUN -m slem meta-train CONFIG --out DIR

Rank 0 writes the run directory and checkpoints and reads them back on a resume (the others
receive their part), so only rank 0's machine needs the directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from slem.errors import SlemError
from slem.rundir import lock_run_dir
from slem.train import distributed
from slem.train.threads import ENV_VARS, available_cores

NprocOption = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        min=1,
        help="Run on this many processes of this machine (starts torchrun; gloo on the CPU, "
        "NCCL on GPUs). For several machines run torchrun yourself (see docs/distributed.md).",
    ),
]
MaxRestartsOption = Annotated[
    int,
    typer.Option(
        "--max-restarts",
        min=0,
        help="With --nproc: restart every rank this many times after one fails; they resume "
        "from the last checkpoint.",
    ),
]


def launch(nproc: int, max_restarts: int, args: list[str], threads: int | None) -> int:
    """Run ``slem ARGS`` on ``nproc`` ranks of this machine under torchrun and return its exit
    code. Each rank gets ``threads`` threads (default: this machine's cores shared out, at
    least one) unless ``OMP_NUM_THREADS`` is set."""
    env = dict(os.environ)
    # torchrun's rendezvous store, shared with the ranks' process group by default, can hand
    # restarted ranks their predecessors' addresses (pytorch#135712): keep them apart
    env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if not any(env.get(v) for v in ENV_VARS):
        per_rank = threads if threads is not None else max(1, available_cores() // nproc)
        env["OMP_NUM_THREADS"] = str(per_rank)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "slem",
        *args,
    ]
    # torchrun runs in a session of its own, so a Ctrl-C reaches it once, from here: this
    # process passes SIGINT and SIGTERM on to it and waits while the ranks stop (they write
    # their checkpoint) and torchrun exits
    child = subprocess.Popen(command, env=env, start_new_session=True)

    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # a signal handler of the caller's: keep waiting
                received.append(signal.SIGINT)
                child.send_signal(signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:  # stopped as asked (torchrun itself exits 1 on a signal)
        return 128 + received[0]
    return code if code >= 0 else 128 - code


def relaunch(nproc: int, max_restarts: int, run_dir: Path | None, threads: int | None) -> int:
    """This very command line (``sys.argv``) on ``nproc`` ranks under torchrun
    (:func:`launch`), without ``--nproc``/``--max-restarts`` and with ``--out run_dir``
    added when given (so every rank and every restart writes the directory this process
    named)."""
    drop = {"--nproc", "--max-restarts"}
    args: list[str] = []
    argv = iter(sys.argv[1:])
    for arg in argv:
        if arg in drop:
            next(argv, None)
        elif arg.split("=", 1)[0] not in drop:
            args.append(arg)
    if run_dir is not None and not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(run_dir)]
    return launch(nproc, max_restarts, args, threads)


def check_launch_options(
    out: Path | None, resume: Path | None, nproc: int | None = None, max_restarts: int = 0
) -> None:
    """Under torchrun every rank (and every restart) must name the same run directory;
    ``--max-restarts`` restarts the ranks ``--nproc`` starts.

    Raises:
        SlemError: started by torchrun without ``--out`` or ``--resume``; ``--max-restarts``
            without ``--nproc``.
    """
    if max_restarts and nproc is None and not distributed.launched():
        raise SlemError("--max-restarts: give --nproc N too (or pass --max-restarts to torchrun)")
    if distributed.launched() and out is None and resume is None:
        raise SlemError(
            "--out: give the run directory when running on several ranks (each rank and "
            "each restart must find the same one), e.g. --out runs/my-run"
        )


def continuing(run_dir: Path, resume: bool) -> bool:
    """``--resume`` was given, or torchrun restarted the ranks after a failure and this very
    torchrun job started the run in ``run_dir`` (:func:`~slem.train.distributed.mark_job`):
    the run then resumes from its last checkpoint. A directory another run left is never
    resumed this way."""
    if resume:
        return True
    if not distributed.restarted():
        return False
    return distributed.on_main(lambda: distributed.started_by_this_job(run_dir))


@contextlib.contextmanager
def run_directory(run_dir: Path, command: str, prepare: Callable[[], None]) -> Iterator[None]:
    """Rank 0 locks ``run_dir`` for the run and calls ``prepare`` (check it is new, write the
    config); an error there is raised on every rank."""

    with contextlib.ExitStack() as stack:

        def on_main() -> None:
            stack.enter_context(lock_run_dir(run_dir, command))
            prepare()

        distributed.on_main(on_main)
        yield


__all__ = [
    "MaxRestartsOption",
    "NprocOption",
    "check_launch_options",
    "continuing",
    "launch",
    "relaunch",
    "run_directory",
]
