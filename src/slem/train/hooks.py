"""How a sample-weighting methodology enters learning: :class:`SampleWeights`.

A weighting net ``h(inputs, class group)`` (MW-Net, Shu et al. 2019; CMW-Net, Shu et al. 2023)
sets the weight of every sample's loss in the training step, ``mean(w * l)``, normalized as
``meta.normalize_weights`` says; with label correction (CMW-Net-SL) the weight splits each
sample's loss between its given label and an EMA teacher's pseudo-label. Its inputs (the loss,
or the task-conditioned ones of :mod:`slem.methodology.inputs`) come from a
:class:`~slem.methodology.inputs.TaskObserver` that follows the run. The trainers (frozen or
meta-learned rule) use the same object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from slem.bilevel import PerSample
from slem.bilevel.fast import inner_value, weight_input
from slem.methodology.inputs import TaskObserver
from slem.methodology.weighting import CMWNet, MWNet, build_weighting
from slem.train.config import MetaConfig
from slem.train.distributed import Ranks, gather_rows_within
from slem.train.objective import Classification
from slem.train.teacher import Teacher, weighted_terms

#: a weighting net as a function: (inputs (n, d), class groups (n,)) -> raw weights (n,)
Rule = Callable[[Tensor, Tensor], Tensor]


class GlobalBatch(NamedTuple):
    """Data-parallel: every rank's per-sample ``losses``, labels ``y`` and training-sample
    indices ``idx`` in rank order, and where this rank's rows lie in them (``own``)."""

    losses: Tensor
    y: Tensor
    idx: Tensor | None
    own: slice


def new_weighting(kind: str, meta: MetaConfig) -> MWNet | CMWNet:
    """An untrained weighting net of ``kind`` with ``meta``'s size, inputs and constraint."""
    return build_weighting(kind, meta.n_groups, meta.hidden, meta.monotone, meta.inputs)


class SampleWeights:
    """The sample weights of a weighting net.

    Args:
        net: the weighting net (MW-Net or CMW-Net, CMW-Net-SL for label correction).
        objective: the classification objective (class groups, normalization, prior).
        model: the model being trained (the label-correction teacher starts as its copy).
        meta: the teacher's settings (``ema_decay``, ``sl_temperature``, ...).
        n_train: training samples (the observer keeps a loss history of each).
        clock: the fraction of training done, in ``[0, 1]`` (the ``progress`` input).
    """

    def __init__(
        self,
        net: MWNet | CMWNet,
        objective: Classification,
        model: nn.Module,
        meta: MetaConfig,
        n_train: int,
        clock: Callable[[], float],
    ) -> None:
        self.net = net
        self.objective = objective
        self.label_correction = bool(getattr(net, "label_correction", False))
        self.teacher = Teacher(model, meta, objective.log_prior) if self.label_correction else None
        self.observer = TaskObserver(net.inputs, n_train, objective.n_classes)
        self.clock = clock
        #: data-parallel: each batch is this rank's shard of a global batch (see
        #: :meth:`weights`); one rank by default (:meth:`shard_over`)
        self.ranks = Ranks()
        self._most = 0  # the most rows of a batch on one rank
        self._last: GlobalBatch | None = None  # the last gather (:meth:`loss` may reuse it)

    def shard_over(self, ranks: Ranks, batch_size: int) -> None:
        """Data-parallel over ``ranks``: each batch (of at most ``batch_size`` rows in all)
        is this rank's contiguous part of a global batch, rank by rank."""
        self.ranks = ranks
        self._most = -(-batch_size // ranks.size)

    def pseudo_labels(self, x: Tensor) -> Tensor | None:
        """CMW-Net-SL's soft pseudo-labels ``(n, C)`` of ``x`` (None without correction)."""
        return self.teacher.pseudo_labels(x) if self.teacher is not None else None

    def terms(self, logits: Tensor, y: Tensor, pseudo: Tensor | None) -> PerSample:
        """The per-sample terms the weights multiply (see :func:`weighted_terms`)."""
        return weighted_terms(logits, y, pseudo)

    def weights(
        self, losses: Tensor, y: Tensor, idx: Tensor | None, rule: Rule | None = None
    ) -> Tensor:
        """The normalized weights ``(n,)`` of per-sample ``losses`` of labels ``y`` of training
        samples ``idx`` (None: not training samples); ``rule``: the net as a function of its
        parameters (meta steps), default the net itself.

        Data-parallel (:attr:`ranks`): the batch is this rank's shard of a global batch; the
        weights are those of the global batch (its loss ratios, ranks, histories and
        normalization), evaluated on every rank over every rank's rows, and this rank's rows
        are returned (their graph reaches ``rule``'s parameters through every row, as the
        normalization does)."""
        if self.ranks.active:
            batch = self._last = self._global_batch(losses, y, idx)
            return self._weights(batch.losses, batch.y, batch.idx, rule)[batch.own]
        return self._weights(losses, y, idx, rule)

    def _weights(self, losses: Tensor, y: Tensor, idx: Tensor | None, rule: Rule | None) -> Tensor:
        inputs = self.observer.features(losses, idx, self.clock())
        raw = (rule or self.net)(inputs, self.objective.class_groups[y])
        return self.normalized(raw, y)

    def _global_batch(self, losses: Tensor, y: Tensor, idx: Tensor | None) -> GlobalBatch:
        """Every rank's ``(losses, y, idx)`` in rank order (one collective), and where this
        rank's rows lie in them."""
        n = len(losses)
        rank = torch.full((n,), float(self.ranks.rank), dtype=torch.float64)
        columns = [losses.detach().double(), y.double(), rank.to(losses.device)]
        if idx is not None:
            columns.append(idx.double())
        rows = gather_rows_within(torch.stack(columns, dim=1), self._most)
        start = int((rows[:, 2] < self.ranks.rank).sum())
        all_idx = rows[:, 3].long() if idx is not None else None
        own = slice(start, start + n)
        return GlobalBatch(rows[:, 0].to(losses.dtype), rows[:, 1].long(), all_idx, own)

    def observe(self, losses: Tensor, idx: Tensor) -> None:
        """The per-sample ``losses`` of training samples ``idx`` join the histories (of the
        global batch, data-parallel: every rank keeps the same histories)."""
        if self.ranks.active and self.observer.stateful:
            # the indices stand in for the labels, which the histories do not need
            batch = self._global_batch(losses, idx, idx)
            assert batch.idx is not None
            losses, idx = batch.losses, batch.idx
        self.observer.observe(losses, idx)

    def normalized(self, w: Tensor, y: Tensor) -> Tensor:
        """``w`` normalized as ``meta.normalize_weights`` says; never under label correction,
        where ``w`` mixes two labels and stays in (0, 1)."""
        return w if self.label_correction else self.objective.normalized(w, y)

    def loss(
        self, terms: PerSample, y: Tensor, idx: Tensor | None, same_batch: bool = False
    ) -> Tensor:
        """The real step's loss ``mean(w * l)`` (plus the unweighted pseudo-label part) on
        training samples ``idx``, the weights held constant; their losses join the observer's
        histories (None: samples without indices, which join none). ``same_batch``: the
        losses are those of the last :meth:`weights` (a meta step's real step reusing its
        forward pass): data-parallel, that call's gather is reused."""
        with torch.no_grad():
            losses = weight_input(terms)
            if self.ranks.active:  # one gather for the weights and the histories
                last, self._last = self._last, None
                batch = last if same_batch and last is not None else None
                batch = batch or self._global_batch(losses, y, idx)
                losses, idx = batch.losses, batch.idx
                w = self._weights(losses, batch.y, idx, None)[batch.own]
            else:
                w = self.weights(losses, y, idx)
        if idx is not None:
            self.observer.observe(losses, idx)
        return inner_value(terms, w)

    def start_epoch(self) -> None:
        """Before each epoch: the observer's task-level estimates follow the histories."""
        self.observer.start_epoch()

    def after_step(self, model: nn.Module, step: int) -> None:
        """After each real step: the EMA teacher follows the model."""
        if self.teacher is not None:
            self.teacher.update(model, step)

    def weight_curve(
        self, losses: Tensor, n_groups: int, points: int
    ) -> tuple[Tensor, Tensor, str]:
        """The net's weight along its first input, ``(grid (points,), curves (n_groups,
        points), input name)``: the grid from 0 to the 99th percentile of that input over the
        training samples whose per-sample ``losses`` (shape ``(n,)``, in index order) are
        given, every other input held at its median over them."""
        idx = torch.arange(len(losses), device=losses.device)
        with torch.no_grad():
            inputs = self.observer.features(losses, idx, self.clock())
            first = inputs[:, 0]
            top = float(torch.quantile(first, 0.99)) if len(first) else 5.0
            grid = torch.linspace(0, max(top, 1.0), points, device=losses.device)
            rows = inputs.median(0).values.repeat(points, 1)
            rows[:, 0] = grid
            curves = [
                self.net(rows, torch.full((points,), g, dtype=torch.long, device=grid.device))
                for g in range(n_groups)
            ]
        return grid, torch.stack(curves), self.net.inputs[0]

    def train_weights(self, model: nn.Module, x: Tensor, y: Tensor) -> np.ndarray:
        """The net's (unnormalized) weight ``(n,)`` of every training sample, in eval mode."""
        losses = self.objective.eval_losses(model, x, y)
        idx = torch.arange(len(y), device=y.device)
        with torch.no_grad():
            inputs = self.observer.features(losses, idx, self.clock())
            w = self.net(inputs, self.objective.class_groups[y])
        return w.cpu().numpy()
