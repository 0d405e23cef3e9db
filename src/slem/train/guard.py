"""How a run stops early: a requested stop, a non-finite loss, a hypergradient that is
exactly zero; and where a non-finite value sits."""

from __future__ import annotations

import torch
from torch import Tensor

from slem.errors import SlemError


class TrainingStopped(Exception):
    """Training stopped early in a consistent state (interrupt or kill); resume to go on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ZeroHypergradient(SlemError):
    """Every meta step of an epoch had an exactly zero hypergradient: nothing is learned."""


class NonFiniteLoss(SlemError):
    """A loss or hypergradient became NaN or infinite; the last finite state is kept."""


def first_non_finite(value: Tensor) -> str:
    """The first NaN or infinite entry of ``value`` and where it is, e.g. ``nan (entry 3)``."""
    flat = value.detach().reshape(-1)
    bad = torch.nonzero(~torch.isfinite(flat))
    if len(bad) == 0:
        return "finite"
    i = int(bad[0])
    shown = f"{float(flat[i])}"
    if flat.numel() == 1:
        return shown
    return f"{shown} at entry {i} of {flat.numel()}, {len(bad)} non-finite"
