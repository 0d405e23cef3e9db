"""Differentiable architecture search (DARTS) of a cell on one task, through the bilevel engine.

The bilevel problem (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR
2019, Eq. 3-4): the supernet's weights ``w`` minimize the training loss under the mixing weights
``softmax(alpha)`` (inner problem), and ``alpha`` (an
:class:`~slem.methodology.architecture.ArchitectureMixing`) minimizes the loss on a held-out
split at the weights that result (outer problem). :class:`DartsSearch` alternates, every
iteration, one architecture step (a :class:`~slem.train.meta_step.MetaStep`:
``bilevel.hypergrad`` of the outer loss through one virtual step of the weights' own optimizer)
and one real step of the weights.

- ``order: second``: the engine's ``finite_difference`` hypergradient, DARTS' second-order
  approximation (Eq. 7-8: the Hessian-vector product as a central difference of
  ``grad_alpha L_train`` at ``w +- eps v``).
- ``order: first``: ``first_order`` with no virtual step: ``grad_alpha L_val(w, alpha)`` at the
  current weights (DARTS' first order, ``xi = 0``).
- ``safeguard: aux_skip``: DARTS- (Chu et al., "DARTS-: Robustly Stepping out of Performance
  Collapse Without Indicators", ICLR 2021, Sec. 3): every cell's output gets ``beta * x`` added,
  ``beta`` decaying linearly from 1 to 0 over the search. The auxiliary skip gives the stable
  gradient flow that otherwise makes ``skip_connect`` win every edge (the collapse of Zela et
  al., ICLR 2020), so the architecture weights judge operations on what they compute.
- ``partial_channels: k``: PC-DARTS' partial channel connections (Xu et al., ICLR 2020) cut the
  mixed operations' memory ``k``-fold (:class:`~slem.methodology.architecture.MixedOp`).

``search`` writes the derived cell (``architecture.json``), the mixing weights as a methodology
artifact, the search history and a ``train.yaml`` that trains the cell from scratch
(``slem train RUN/train.yaml``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from slem.bilevel import functional
from slem.data.task import Task
from slem.errors import SlemError
from slem.methodology.architecture import (
    DEFAULT_OPERATIONS,
    OPERATIONS,
    ArchitectureMixing,
    CellNetwork,
    CellSpace,
)
from slem.train.callbacks import Callback
from slem.train.config import MetaConfig
from slem.train.config_methods import _Strict
from slem.train.guard import NonFiniteLoss
from slem.train.loop import Iterations, MetaLearner
from slem.train.meta_step import MetaStep
from slem.train.threads import resolve_device


class SpaceConfig(_Strict):
    """The cell search space (:class:`~slem.methodology.architecture.CellSpace`)."""

    nodes: int = Field(3, ge=2, le=6, description="nodes of a cell; edges = nodes(nodes-1)/2")
    operations: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPERATIONS),
        description=f"candidate operations of every edge, from {', '.join(OPERATIONS)}",
    )

    @model_validator(mode="after")
    def _valid(self) -> SpaceConfig:
        try:
            self.space()
        except SlemError as exc:
            raise ValueError(str(exc)) from None
        return self

    def space(self) -> CellSpace:
        return CellSpace(self.nodes, tuple(self.operations))


class NetworkConfig(_Strict):
    """The macro skeleton around the cells (:class:`~slem.methodology.architecture.CellNetwork`;
    ``slem train``'s ``model.width``, ``model.cells``, ``model.stages`` for ``arch: cell``)."""

    channels: int = Field(16, ge=1, description="channels of the first stage")
    cells: int = Field(1, ge=1, description="cells per stage")
    stages: int = Field(2, ge=1, description="stages; channels double between them")


class DartsConfig(_Strict):
    """How DARTS searches (defaults: DARTS' CIFAR-10 recipe, Liu et al. 2019, Sec. 3.1, scaled to
    small tasks: a larger architecture rate for a few epochs)."""

    order: Literal["first", "second"] = Field(
        "second", description="second: the finite-difference hypergradient; first: xi = 0"
    )
    epochs: int = Field(
        8,
        ge=1,
        description="passes over the weights' half of the data (8: about 2.3 trainings of "
        "one network on the MNIST-1D benchmark, docs/results/nas.md)",
    )
    warmup_epochs: int = Field(
        0, ge=0, description="epochs of weight steps alone before the architecture moves"
    )
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.025, gt=0, description="the weights' SGD rate (cosine to lr_min)")
    lr_min: float = Field(0.001, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0, description="the weights' gradient norm clip")
    arch_lr: float = Field(3e-3, gt=0, description="Adam rate of the architecture parameters")
    arch_weight_decay: float = Field(1e-3, ge=0)
    safeguard: Literal["none", "aux_skip"] = Field(
        "none",
        description="aux_skip: DARTS-'s decaying auxiliary skip (Chu et al. 2021) against the "
        "collapse to skip connections; none: plain DARTS (measured better on the MNIST-1D "
        "cell space: docs/results/nas.md)",
    )
    partial_channels: int = Field(
        1, ge=1, description="PC-DARTS: mix 1/k of the channels (k-fold less memory)"
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the mixing")

    @model_validator(mode="after")
    def _warmup(self) -> DartsConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"darts.warmup_epochs ({self.warmup_epochs}) leaves no search epoch of "
                f"{self.epochs}; lower it or raise darts.epochs"
            )
        return self


def split_for_search(task: Task, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """DARTS' split of the training set into two halves (Liu et al. 2019, Sec. 3.1): the
    weights train on one, the architecture on the other; ``task.val`` and ``task.test`` stay
    unseen. Inputs ``(n, *input_shape)`` float32, labels int64.

    Raises:
        SlemError: not a classification task, or fewer than 4 training samples.
    """
    if not task.is_classification:
        raise SlemError("architecture search needs a classification task (data.task_type)")
    n = len(task.train)
    if n < 4:
        raise SlemError(f"the training split has {n} samples; a search needs at least 4")
    shape = tuple(task.features.input_shape)
    x = torch.as_tensor(task.train.X, dtype=torch.float32).reshape(n, *shape)
    y = torch.as_tensor(task.train.y, dtype=torch.long)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = order[: n // 2], order[n // 2 :]
    return (x[a], y[a]), (x[b], y[b])


def as_inputs(task: Task, split: str) -> tuple[Tensor, Tensor]:
    """A split of ``task`` as tensors ``(n, *input_shape)``, ``(n,)``."""
    part = getattr(task, split)
    shape = tuple(task.features.input_shape)
    x = torch.as_tensor(part.X, dtype=torch.float32).reshape(len(part), *shape)
    return x, torch.as_tensor(part.y, dtype=torch.long)


@dataclass(frozen=True)
class SearchPlan(Iterations):
    """``total`` iterations (one architecture step and one weight step each) in epochs of
    ``steps_per_epoch``: one pass over the weights' half of the data."""

    steps_per_epoch: int = 1

    @property
    def per_epoch(self) -> int:
        return self.steps_per_epoch

    def position(self, epoch: int, step: int) -> str:
        """``epoch 3/8`` (``epoch`` 1-based, as the progress callbacks pass it)."""
        return f"epoch {min(epoch, self.total_epochs)}/{self.total_epochs}"


def accuracy(model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> float:
    """Accuracy (percent) of ``model(x, **kwargs)``, eval mode, batches of 1000 rows."""
    was = model.training
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(x[i : i + 1000], **kwargs).argmax(1) == y[i : i + 1000]).sum())
            for i in range(0, len(y), 1000)
        )
    model.train(was)
    return 100.0 * hits / max(len(y), 1)


class DartsSearch(MetaLearner):
    """DARTS on one task (see the module docstring), run by :class:`~slem.train.loop.Loop`:
    checkpoints, exact resume and clean stops as every meta-trainer.

    Args:
        darts: the search settings. space: the cell space. network: the skeleton.
        data: ``((x, y) weights' half, (x, y) architecture's half, (x, y) validation)``,
            inputs ``(n, *input_shape)``; the validation split only reports the supernet's
            accuracy after each epoch.
        n_classes: the task's classes. seed: weights, batches. device: where it runs.

    Attributes:
        net: ``{"supernet": CellNetwork, "mixing": ArchitectureMixing}``.
        history: per iteration ``iteration``, ``loss`` (the weights' training loss),
            ``arch_loss`` (the outer loss, after the warm-up), ``beta``; at each epoch's end
            also ``epoch``, ``val_accuracy`` (the supernet's, %) and ``weights`` (E x K
            mixing weights) and ``genotype`` (the cell derived then).
    """

    net: nn.ModuleDict

    def __init__(
        self,
        darts: DartsConfig,
        space: CellSpace,
        network: NetworkConfig,
        data: Sequence[tuple[Tensor, Tensor]],
        n_classes: int,
        seed: int = 0,
        device: str = "auto",
        callbacks: Sequence[Callback] = (),
    ) -> None:
        super().__init__(callbacks)
        self.darts = darts
        self.device = resolve_device(device)
        (self.x_w, self.y_w), (self.x_a, self.y_a), (self.x_v, self.y_v) = (
            (x.to(self.device), y.to(self.device)) for x, y in data
        )
        torch.manual_seed(seed)
        dims = self.x_w.dim() - 2
        if dims not in (1, 2):
            raise SlemError(
                f"a cell search needs signals (channels, length) or images (channels, h, w); "
                f"the inputs are {tuple(self.x_w.shape[1:])}"
            )
        if network.channels % darts.partial_channels:
            raise SlemError(
                f"darts.partial_channels ({darts.partial_channels}) must divide "
                f"network.channels ({network.channels})"
            )
        supernet = CellNetwork(
            int(self.x_w.shape[1]),
            n_classes,
            space=space,
            channels=network.channels,
            cells=network.cells,
            stages=network.stages,
            dims=dims,
            partial_channels=darts.partial_channels,
        )
        mixing = ArchitectureMixing(space.nodes, space.operations, darts.temperature)
        self.net = nn.ModuleDict({"supernet": supernet, "mixing": mixing}).to(self.device)
        self.generator = torch.Generator().manual_seed(seed)
        n = len(self.y_w)
        per_epoch = max(1, math.ceil(n / darts.batch_size))
        self.plan = SearchPlan(darts.epochs * per_epoch, per_epoch)
        self.label = "DARTS"
        self.optimizer = torch.optim.SGD(
            supernet.parameters(),
            lr=darts.lr,
            momentum=darts.momentum,
            weight_decay=darts.weight_decay,
        )
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, self.plan.total_steps, eta_min=darts.lr_min
        )
        meta = MetaConfig(
            hypergrad="finite_difference" if darts.order == "second" else "first_order",
            lr=darts.arch_lr,
            weight_decay=darts.arch_weight_decay,
            optimizer="adam",
        )
        self.outer = MetaStep(meta, self.optimizer, dict(mixing.named_parameters()))
        self.meta_optimizer = self.outer.meta_optimizer
        self.f = functional(supernet)
        self.batches: list[tuple[Tensor, Tensor]] = []

    @property
    def supernet(self) -> CellNetwork:
        return cast(CellNetwork, self.net["supernet"])

    @property
    def mixing(self) -> ArchitectureMixing:
        return cast(ArchitectureMixing, self.net["mixing"])

    def beta(self) -> float:
        """The auxiliary skip's weight now: ``1 - t / T`` with ``aux_skip``, else 0."""
        if self.darts.safeguard != "aux_skip":
            return 0.0
        return 1.0 - self.iteration / self.plan.total_steps

    def on_epoch_start(self) -> None:
        """Shuffle both halves for the epoch (one permutation each, from the generator)."""
        per = self.plan.per_epoch
        b = self.darts.batch_size
        w = torch.randperm(len(self.y_w), generator=self.generator)
        a = torch.randperm(len(self.y_a), generator=self.generator)
        # the architecture's half is cycled if it is shorter than the weights' half
        a = a.repeat(math.ceil(len(w) / max(len(a), 1)))
        self.batches = [
            (w[i * b : (i + 1) * b].to(self.device), a[i * b : (i + 1) * b].to(self.device))
            for i in range(per)
        ]

    def _loss(self, params: dict[str, Tensor], hyper: dict[str, Tensor], batch: Any) -> Tensor:
        x, y, beta = batch
        return F.cross_entropy(self.f(params, x, self.mixing(hyper["alpha"]), beta), y)

    def meta_step(self) -> float:
        if not self.batches:  # only before the first epoch: a checkpoint holds its epoch's
            self.on_epoch_start()
        iw, ia = self.batches[self.iteration % self.plan.per_epoch]
        beta = self.beta()
        inner = (self.x_w[iw], self.y_w[iw], beta)
        outer = (self.x_a[ia], self.y_a[ia], beta)
        row: dict[str, Any] = {"iteration": self.iteration + 1, "beta": round(beta, 4)}
        if self.progress.epoch >= self.darts.warmup_epochs:
            params: dict[str, Tensor] = dict(self.supernet.named_parameters())
            problem = self.outer.problem(params, self._loss, self._loss)
            steps = 0 if self.darts.order == "first" else None
            result = self.outer(problem, inner, outer, steps=steps)
            row["arch_loss"] = result.outer_loss
        weights = self.mixing().detach()
        loss = F.cross_entropy(self.supernet(inner[0], weights, beta), inner[1])
        if not bool(torch.isfinite(loss)):
            raise NonFiniteLoss(
                f"the training loss became {float(loss)} at iteration {self.iteration + 1}; "
                "lower darts.lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.supernet.parameters(), self.darts.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        row["loss"] = loss.item()
        row["seconds"] = round(self.elapsed, 3)
        if (self.iteration + 1) % self.plan.per_epoch == 0:
            row.update(self.epoch_report())
        self.history.append(row)
        return loss.item()

    def epoch_report(self) -> dict[str, Any]:
        """The supernet's validation accuracy, the mixing weights and the derived cell."""
        weights = self.mixing().detach()
        return {
            "epoch": self.iteration // self.plan.per_epoch + 1,
            "val_accuracy": round(
                accuracy(self.supernet, self.x_v, self.y_v, weights=weights, aux_skip=0.0), 3
            ),
            "weights": [[round(float(v), 5) for v in row] for row in weights.cpu()],
            "genotype": str(self.mixing.genotype()),
        }

    def extra_state(self) -> dict[str, Any]:
        """The weights' optimizer and schedule, and the current epoch's batches (a run resumed
        mid-epoch continues them: the generator has already moved past their draw)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "batches": [(w.cpu(), a.cpu()) for w, a in self.batches],
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.batches = [(w.to(self.device), a.to(self.device)) for w, a in state["batches"]]

    def weight_history(self) -> np.ndarray:
        """The mixing weights after each epoch, ``(epochs, E, K)``."""
        rows = [r["weights"] for r in self.history if "weights" in r]
        return np.asarray(rows, dtype=np.float64)


def darts_summary(search: DartsSearch) -> dict[str, Any]:
    """What a finished search found: the derived cell, its skip share, the supernet's last
    validation accuracy, iterations and seconds."""
    genotype = search.mixing.genotype()
    last: dict[str, Any] = next((r for r in reversed(search.history) if "epoch" in r), {})
    return {
        "genotype": str(genotype),
        "ops": list(genotype.ops),
        "skip_share": round(genotype.skip_share, 4),
        "supernet_val_accuracy": last.get("val_accuracy"),
        "order": search.darts.order,
        "safeguard": search.darts.safeguard,
        "partial_channels": search.darts.partial_channels,
        "iterations": search.iteration,
        "seconds": round(search.elapsed, 1),
    }
