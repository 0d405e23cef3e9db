"""MLR-SNet: a meta-learned learning-rate schedule.

The hook into learning is ``lr_t = scale * h(loss_t, memory)``: at every training step an LSTM
reads the current mini-batch loss and returns the step size. The trainer meta-learns ``h`` so
that each SGD step lowers the loss on a meta set, then applies it frozen to new tasks (other
data, architectures and epoch budgets) with no learning-rate tuning.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from slem.errors import SlemError
from slem.methodology.base import Methodology

#: LSTM memory (h, c), each of shape (1, hidden).
ScheduleState = tuple[Tensor, Tensor]


def lr_scale(initial_loss: float, n_classes: int, momentum: float = 0.0) -> float:
    """The largest learning rate the schedule can output on a task (MLR-SNet's ``gamma``).

    It grows with the loss at the start of training and shrinks with the number of classes:
    ``sqrt(L0) * log(L0 * C) / C**0.25 / 4``. It is multiplied by ``1 - momentum`` so the
    effective step ``lr / (1 - momentum)`` of momentum SGD matches plain SGD: one schedule
    then drives SGD with or without momentum.
    """
    if not math.isfinite(initial_loss) or initial_loss <= 0:
        raise SlemError(f"the initial training loss is {initial_loss}; cannot scale the schedule")
    c = max(n_classes, 2)
    gamma = abs(math.sqrt(initial_loss) * math.log(initial_loss * c) / c**0.25 / 4.0)
    return gamma * (1.0 - momentum)


class ScheduleNet(nn.Module):
    """One schedule: loss -> embedding -> LSTM cell -> sigmoid, a factor in (0, 1)."""

    def __init__(self, hidden: int = 50) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(1, hidden), nn.ReLU())
        self.cell = nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, loss: Tensor, state: ScheduleState) -> tuple[Tensor, ScheduleState]:
        h, c = self.cell(self.embed(loss.reshape(1, 1)), state)
        return torch.sigmoid(self.out(h)).reshape(()), (h, c)


class MLRSNet(Methodology):
    """MLR-SNet (Shu et al., 2021): what it learns is *how large a step to take now*, given the
    loss it has seen so far. An LSTM reads the mini-batch loss (divided by ``log C``, the loss of
    a chance-level classifier, so tasks with different class counts read alike) and outputs a
    factor in (0, 1) of the task's scale (:func:`lr_scale`).

    The artifact holds several snapshots of the net taken over meta-training (``stages``): the
    first is the net early in meta-training, which has learned the schedule of early training,
    the last is the final net. Applied to a new run, stage ``i`` takes over at fraction
    ``switch_at[i]`` of the epoch budget, as the MLR-SNet paper swaps its snapshots."""

    kind: ClassVar[str] = "lr_schedule"
    input_features: ClassVar[tuple[str, ...]] = ("loss / log(n_classes)",)

    def __init__(
        self, hidden: int = 50, n_stages: int = 3, switch_at: list[float] | None = None
    ) -> None:
        super().__init__()
        if n_stages < 1:
            raise SlemError(f"an lr_schedule needs at least one stage, not {n_stages}")
        switch = switch_at if switch_at is not None else [i / n_stages for i in range(n_stages)]
        if len(switch) != n_stages or switch[0] != 0.0 or sorted(switch) != list(switch):
            raise SlemError(
                f"switch_at {switch} must start at 0.0, increase, and have one entry per stage "
                f"({n_stages})"
            )
        self.hidden = hidden
        self.switch_at = [float(s) for s in switch]
        self.stages = nn.ModuleList(ScheduleNet(hidden) for _ in range(n_stages))
        for stage in self.stages[1:]:  # all snapshots start as the same net
            stage.load_state_dict(self.stages[0].state_dict())

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "n_stages": len(self.stages), "switch_at": self.switch_at}

    @property
    def live(self) -> ScheduleNet:
        """The net being meta-trained (the final stage); earlier stages are its snapshots."""
        net = self.stages[-1]
        assert isinstance(net, ScheduleNet)
        return net

    def stage_at(self, fraction: float) -> int:
        """The stage that drives a run at ``fraction`` (0..1) of its epoch budget."""
        return max(i for i, s in enumerate(self.switch_at) if fraction >= s - 1e-9)

    def snapshot(self, stage: int) -> None:
        """Copy the live net into ``stage`` (during meta-training)."""
        self.stages[stage].load_state_dict(self.live.state_dict())

    def initial_state(self, device: torch.device | str = "cpu") -> ScheduleState:
        zeros = torch.zeros(1, self.hidden, device=device)
        return zeros, zeros.clone()

    def forward(
        self, loss: Tensor, state: ScheduleState, stage: int = -1
    ) -> tuple[Tensor, ScheduleState]:
        """The factor in (0, 1) for this step's ``loss`` (already divided by ``log C``) and the
        new LSTM memory."""
        net = self.stages[stage]
        assert isinstance(net, ScheduleNet)
        factor, new_state = net(loss, state)
        return factor, new_state
