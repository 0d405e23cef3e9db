"""How many CPU threads torch uses: one process-wide setting for every slem command.

Torch's own default is one thread per physical core. slem's models are small (MLPs and
narrow CNNs on batches of ~128), whose per-step kernels gain little past a few threads, while
running as many threads as cores on a machine that other processes share over-subscribes it:
an ERM run measured 150 s with the default against 4 s with one thread on a loaded 2-core
machine. So slem's default is ``min(4, cores this process may use)``, unless the user set
``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``), which is then left in charge.
"""

from __future__ import annotations

import os

import torch

from slem.errors import SlemError

#: the most threads slem uses unless told otherwise
DEFAULT_MAX_THREADS = 4
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int | None:
    """slem's default thread count; None when an environment variable already sets it."""
    if any(os.environ.get(v) for v in ENV_VARS):
        return None
    return min(DEFAULT_MAX_THREADS, available_cores())


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for this process and return the count in effect.

    Args:
        threads: a count >= 1, or None for :func:`default_threads`.

    Raises:
        SlemError: ``threads`` is below 1.
    """
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise SlemError(f"threads must be at least 1 (got {threads}); e.g. --threads 1")
    n = threads if threads is not None else default_threads()
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a device, else the CPU; ``cpu`` or ``cuda``.

    Raises:
        SlemError: ``cuda`` was asked for and torch sees no CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SlemError("device cuda requested but torch sees no CUDA device; use device cpu")
    return torch.device(name)
