"""How a run stops early: a requested stop, a non-finite loss, a hypergradient that is
exactly zero; and where a non-finite value sits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from slem.errors import SlemError

if TYPE_CHECKING:
    from slem.train.config import TrainConfig


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


def blowup_context(epoch: int, step_in_epoch: int, checkpoint: Path | None) -> str:
    """Where a blow-up happened (0-based counters) and what the user can do: resume from a
    checkpoint only if one exists."""
    where = f"epoch {epoch + 1}, step {step_in_epoch + 1}"
    if checkpoint is not None and checkpoint.is_file():
        return (
            f"{where}; the last checkpoint before it is kept ({checkpoint}): lower "
            "optim.lr (or meta.lr) and resume, or restart"
        )
    return f"{where}; no checkpoint was written yet: lower optim.lr (or meta.lr) and start again"


def check_finite(value: Tensor, what: str, context: Callable[[], str]) -> None:
    """Raise :class:`NonFiniteLoss` when ``value`` has a NaN or infinity; ``context()`` says
    where and what the user can do (called only on failure)."""
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLoss(f"the {what} became {first_non_finite(value)} at {context()}")


def check_parameters(model: nn.Module, context: Callable[[], str]) -> None:
    """A finite loss can still step the parameters to infinity: one device sync per step
    checks every floating state entry of ``model``; the slow search for the culprit runs only
    on a blow-up."""
    state = {k: t for k, t in model.state_dict().items() if t.is_floating_point()}
    if bool(torch.stack([t.isfinite().all() for t in state.values()]).all()):
        return
    for name, t in state.items():
        if not bool(t.isfinite().all()):
            raise NonFiniteLoss(
                f"the model's {name} became non-finite ({first_non_finite(t)}) at {context()}"
            )


class Stoppable(Protocol):
    """Anything a Ctrl-C handler can ask to stop after its current step."""

    def request_stop(self, reason: str) -> None: ...


def check_hypergradients(norms: list[float] | None, epoch: int, config: TrainConfig) -> None:
    """Raise :class:`ZeroHypergradient` when every meta step of ``epoch`` (0-based) had an
    exactly zero hypergradient (``norms``: their norms; None or empty: no meta step)."""
    if norms and max(norms) == 0.0:
        raise ZeroHypergradient(
            f"the hypergradient was exactly 0 in all {len(norms)} meta steps of epoch "
            f"{epoch + 1}: the methodology learns nothing with meta.hypergrad "
            f"'{config.meta.hypergrad}' here; use meta.hypergrad lookahead (see "
            "slem.train.validity)"
        )
