"""The plan of a run: how many epochs and steps, which batches, at which learning rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from slem.train.config import TrainConfig
from slem.train.distributed import Ranks, rows_of
from slem.train.methods import MethodSpec
from slem.train.optimizers import scheduled_lr


@dataclass(frozen=True)
class Batches(Sequence[tuple[Tensor, Tensor, Tensor]]):
    """The minibatches of one epoch: item ``k`` is ``(inputs, targets, indices)`` of the
    ``k``-th ``size`` entries of ``order`` (a permutation of the rows). Data-parallel over
    ``ranks``: this rank's contiguous part of that global batch
    (:func:`~slem.train.distributed.rows_of`; every rank draws the same ``order``)."""

    x: Tensor
    y: Tensor
    order: Tensor
    size: int
    steps: int
    ranks: Ranks = field(default_factory=Ranks)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        if not 0 <= k < self.steps:
            raise IndexError(k)
        idx = self.order[k * self.size : (k + 1) * self.size]
        if self.ranks.active:
            idx = idx[rows_of(len(idx), self.ranks)]
        return self.x[idx], self.y[idx], idx


class Plan:
    """Epochs of ``optim.batch_size`` steps over ``n_train`` samples, then, for a method that
    fine-tunes, ``loss.finetune_epochs`` on the ``n_meta`` meta samples in batches of 32.

    Args:
        config: ``optim`` (epochs, batch size, schedule) and ``loss`` (fine-tuning).
        spec: the method (whether it fine-tunes).
        n_train: training samples.
        n_meta: meta samples (0: none).
    """

    def __init__(self, config: TrainConfig, spec: MethodSpec, n_train: int, n_meta: int) -> None:
        self.optim, self.loss = config.optim, config.loss
        self.batch_size = min(config.optim.batch_size, n_train)
        self.steps_per_epoch = max(1, n_train // self.batch_size)
        self.finetune_epochs = self.loss.finetune_epochs if spec.finetune else 0
        self.finetune_batch = min(32, max(n_meta, 1))
        self.finetune_steps = max(1, max(n_meta, 1) // self.finetune_batch)

    @property
    def total_epochs(self) -> int:
        return self.optim.epochs + self.finetune_epochs

    @property
    def total_steps(self) -> int:
        return self.optim.epochs * self.steps_per_epoch + self.finetune_epochs * self.finetune_steps

    def position(self, epoch: int, step: int) -> str:
        """``epoch 3/30`` (``epoch`` 1-based)."""
        return f"epoch {epoch}/{self.total_epochs}"

    def lr(self, epoch: int, step: int) -> float:
        """The scheduled rate at global ``step`` (``optim.schedule``), or the fine-tuning rate
        (``optim.lr * loss.finetune_lr_factor``) after ``optim.epochs``."""
        o = self.optim
        if epoch >= o.epochs:
            return o.lr * self.loss.finetune_lr_factor
        return scheduled_lr(o, step / max(o.epochs * self.steps_per_epoch, 1))

    def batches(
        self, epoch: int, train: tuple[Tensor, Tensor], meta: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor, int, int]:
        """The epoch's ``(inputs, targets, steps, batch size)``: the training split, or the
        clean meta set in fine-tuning epochs."""
        if epoch >= self.optim.epochs:
            assert meta is not None
            return meta[0], meta[1], self.finetune_steps, self.finetune_batch
        return train[0], train[1], self.steps_per_epoch, self.batch_size

    def epoch_batches(
        self,
        epoch: int,
        seed: int,
        train: tuple[Tensor, Tensor],
        meta: tuple[Tensor, Tensor] | None,
        ranks: Ranks = Ranks(),
    ) -> Batches:
        """The minibatches of ``epoch`` (:meth:`batches`) in the order drawn from
        ``(seed, epoch)`` alone, so a resumed run continues with the same order; on several
        ``ranks`` (data-parallel), this rank's part of each."""
        x, y, steps, size = self.batches(epoch, train, meta)
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(y), generator=g).to(y.device)
        return Batches(x, y, order, size, steps, ranks)
