"""Architecture mixing: a cell search space, its continuous relaxation and the derived cell.

A *cell* is a small directed acyclic graph over ``nodes`` feature maps (NAS-Bench-201's
topology space, Dong & Yang, ICLR 2020): node 0 is the cell's input, node ``j`` is the sum over
``i < j`` of ``op_ij(x_i)``, and the last node is the cell's output. Every edge ``(i, j)`` holds
one operation from a fixed list, so a space of ``E = nodes (nodes - 1) / 2`` edges and ``K``
operations holds ``K ** E`` cells (3 nodes, 5 operations: 125; 4 nodes: NAS-Bench-201's 15,625).

- :class:`CellSpace` and :class:`Genotype`: the space and one discrete cell in it (NAS-Bench-201's
  string form ``|conv_3~0|+|skip_connect~0|conv_3~1|``; saved as ``architecture.json``).
- :class:`CellNetwork`: a stem, ``stages`` stages of ``cells`` cells (the channels double and the
  length halves between stages), global average pooling and a linear head; 1-D signals
  (``dims=1``, e.g. MNIST-1D) or images (``dims=2``). With a genotype it is the discrete network
  (``slem train``'s ``model.arch: cell``); without, it is the weight-sharing supernet whose every
  edge is a :class:`MixedOp` weighted by the ``weights`` passed to ``forward``.
- :class:`ArchitectureMixing`: the methodology of DARTS (Liu, Simonyan & Yang, ICLR 2019): the
  architecture parameters ``alpha`` (E, K), the mixing weights ``softmax(alpha)`` it hands the
  supernet (DARTS Eq. 1), and the derived genotype (the strongest non-zero operation of each
  edge, DARTS Sec. 2.4). It observes nothing of a task: the relaxation is a per-task
  hyperparameter learned on a validation split by the bilevel engine (``slem nas search``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from slem.errors import SlemError
from slem.methodology.base import Methodology
from slem.rundir import atomic_write_text

#: NAS-Bench-201's five operations, in 1-D or 2-D (``conv_k``: ReLU, convolution, BatchNorm)
DEFAULT_OPERATIONS = ("none", "skip_connect", "conv_1", "conv_3", "avg_pool_3")
ARCHITECTURE_FILE = "architecture.json"


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _norm(dims: int) -> type[nn.Module]:
    return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d


class Zero(nn.Module):
    """The ``none`` operation: an all-zero map of the input's shape."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class ReLUConvBN(nn.Sequential):
    """ReLU, a stride-1 same-padded convolution of kernel ``k``, BatchNorm (``affine`` False in
    the supernet, as in DARTS' search)."""

    def __init__(self, channels: int, k: int, dims: int, affine: bool) -> None:
        super().__init__(
            nn.ReLU(),
            _conv(dims)(channels, channels, k, padding=k // 2, bias=False),
            _norm(dims)(channels, affine=affine),
        )


def _pool(kind: str, k: int, dims: int) -> nn.Module:
    if kind == "avg":
        cls: Any = nn.AvgPool1d if dims == 1 else nn.AvgPool2d
        return cls(k, stride=1, padding=k // 2, count_include_pad=False)
    cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
    return cls(k, stride=1, padding=k // 2)


#: operation name -> builder ``(channels, dims, affine) -> nn.Module``; every operation keeps
#: the input's shape
OPERATIONS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda c, d, a: Zero(),
    "skip_connect": lambda c, d, a: nn.Identity(),
    "conv_1": lambda c, d, a: ReLUConvBN(c, 1, d, a),
    "conv_3": lambda c, d, a: ReLUConvBN(c, 3, d, a),
    "conv_5": lambda c, d, a: ReLUConvBN(c, 5, d, a),
    "avg_pool_3": lambda c, d, a: _pool("avg", 3, d),
    "max_pool_3": lambda c, d, a: _pool("max", 3, d),
}
#: NAS-Bench-201's operation names -> slem's (a hint where a string uses the former)
NB201_NAMES = {"nor_conv_1x1": "conv_1", "nor_conv_3x3": "conv_3", "avg_pool_3x3": "avg_pool_3"}
#: operations without parameters (what the skip-collapse literature counts)
PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3", "max_pool_3")


@dataclass(frozen=True)
class CellSpace:
    """A cell search space: ``nodes`` nodes (at least 2) and the candidate ``operations`` of
    every edge (names of :data:`OPERATIONS`).

    Raises:
        SlemError: fewer than 2 nodes, fewer than 2 operations, a repeated or unknown one.
    """

    nodes: int = 3
    operations: tuple[str, ...] = DEFAULT_OPERATIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "operations", tuple(self.operations))
        if self.nodes < 2:
            raise SlemError(f"a cell needs at least 2 nodes, got {self.nodes}")
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown:
            raise SlemError(
                f"unknown operation(s) {', '.join(unknown)}; use {', '.join(OPERATIONS)}"
            )
        if len(set(self.operations)) != len(self.operations) or len(self.operations) < 2:
            raise SlemError(
                f"operations must be at least 2 distinct names, got {list(self.operations)}"
            )

    @property
    def edges(self) -> list[tuple[int, int]]:
        """The edges ``(i, j)``, ``i < j``, ordered by target node then source (NAS-Bench-201's
        order: ``(0,1), (0,2), (1,2), (0,3), ...``)."""
        return [(i, j) for j in range(1, self.nodes) for i in range(j)]

    @property
    def edge_names(self) -> list[str]:
        """One name per edge, ``edge_i_j`` (the parameter names of a black-box search)."""
        return [f"edge_{i}_{j}" for i, j in self.edges]

    @property
    def size(self) -> int:
        """How many cells the space holds (``K ** E``)."""
        return len(self.operations) ** len(self.edges)

    def genotypes(self) -> Iterator[Genotype]:
        """Every cell of the space, in lexicographic order of operation indices."""
        for ops in itertools.product(self.operations, repeat=len(self.edges)):
            yield Genotype(self, ops)

    def genotype(self, choices: dict[str, str]) -> Genotype:
        """The cell whose operations ``choices`` names by :attr:`edge_names`.

        Raises:
            SlemError: an edge missing from ``choices``.
        """
        missing = [n for n in self.edge_names if n not in choices]
        if missing:
            raise SlemError(f"no operation for {', '.join(missing)}")
        return Genotype(self, tuple(choices[n] for n in self.edge_names))

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "operations": list(self.operations)}


@dataclass(frozen=True)
class Genotype:
    """One discrete cell: the operation ``ops[e]`` of every edge ``e`` of ``space.edges``.

    Raises:
        SlemError: the wrong number of operations, or one outside the space.
    """

    space: CellSpace
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if len(self.ops) != len(self.space.edges):
            raise SlemError(
                f"a {self.space.nodes}-node cell has {len(self.space.edges)} edges, got "
                f"{len(self.ops)} operations"
            )
        bad = list(dict.fromkeys(op for op in self.ops if op not in self.space.operations))
        if bad:
            renamed = [f"{op} is {NB201_NAMES[op]}" for op in bad if op in NB201_NAMES]
            hint = f"; in slem's names NAS-Bench-201's {', '.join(renamed)}" if renamed else ""
            raise SlemError(
                f"operation(s) {', '.join(bad)} are not in the space "
                f"({', '.join(self.space.operations)}){hint}"
            )

    def __str__(self) -> str:
        """NAS-Bench-201's form: one ``|op~i|...|`` group per target node, joined by ``+``."""
        groups = []
        for j in range(1, self.space.nodes):
            parts = [
                f"{op}~{i}" for (i, t), op in zip(self.space.edges, self.ops, strict=True) if t == j
            ]
            groups.append("|" + "|".join(parts) + "|")
        return "+".join(groups)

    @classmethod
    def parse(cls, text: str, operations: Sequence[str] | None = None) -> Genotype:
        """A genotype from NAS-Bench-201's string form (``|op~0|+|op~0|op~1|``), in the space
        of ``operations`` (default: :data:`DEFAULT_OPERATIONS`, or every known operation when
        the string uses others).

        Raises:
            SlemError: the string is not of that form.
        """
        groups = [g.strip("|") for g in text.strip().split("+")]
        ops: list[str] = []
        for j, group in enumerate(groups, start=1):
            parts = [p for p in group.split("|") if p]
            sources = [p.rpartition("~") for p in parts]
            if [s for _, _, s in sources] != [str(i) for i in range(j)]:
                raise SlemError(
                    f"genotype {text!r}: node {j} must list its inputs 0..{j - 1} as op~i "
                    "(NAS-Bench-201's form, e.g. |conv_3~0|+|skip_connect~0|conv_3~1|)"
                )
            ops += [op for op, _, _ in sources]
        if operations is None:
            known = set(DEFAULT_OPERATIONS)
            operations = DEFAULT_OPERATIONS if known.issuperset(ops) else tuple(OPERATIONS)
        return cls(CellSpace(len(groups) + 1, tuple(operations)), tuple(ops))

    @property
    def connected(self) -> bool:
        """Whether the output node is reachable from the input through edges that are not
        ``none`` (otherwise the cell outputs zeros whatever its input: a network of it cannot
        learn)."""
        reach = {0}
        for (i, j), op in zip(self.space.edges, self.ops, strict=True):
            if op != "none" and i in reach:
                reach.add(j)
        return self.space.nodes - 1 in reach

    @property
    def skip_share(self) -> float:
        """The share of edges that are ``skip_connect``."""
        return self.ops.count("skip_connect") / len(self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {**self.space.to_dict(), "ops": list(self.ops), "genotype": str(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Genotype:
        """The inverse of :meth:`to_dict`.

        Raises:
            SlemError: a key missing or a value out of the space.
        """
        try:
            space = CellSpace(int(data["nodes"]), tuple(data["operations"]))
            return cls(space, tuple(data["ops"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SlemError(
                f"not a cell architecture ({exc}); expected nodes, operations, ops"
            ) from None

    def save(self, path: str | Path, **info: Any) -> Path:
        """Write ``architecture.json`` (or ``path`` if it names a ``.json`` file), atomically;
        ``info`` is stored beside the cell (where it was found, its score, ...)."""
        target = Path(path)
        if target.suffix != ".json":
            target = target / ARCHITECTURE_FILE
        atomic_write_text(target, json.dumps({**self.to_dict(), **info}, indent=2))
        return target

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """Read an ``architecture.json`` (a file, or a run directory holding one).

        Raises:
            SlemError: no such file, or not a cell architecture.
        """
        target = Path(path)
        if target.is_dir():
            target = target / ARCHITECTURE_FILE
        if not target.is_file():
            raise SlemError(
                f"{target} not found; give an architecture.json that slem nas search wrote "
                "(or its run directory), or the genotype string"
            )
        try:
            data = json.loads(target.read_text())
        except (OSError, ValueError) as exc:
            raise SlemError(f"{target}: cannot read ({exc})") from None
        return cls.from_dict(data)


def resolve_genotype(value: str | Genotype, operations: Sequence[str] | None = None) -> Genotype:
    """A genotype from a :class:`Genotype`, its string form, or the path of an
    ``architecture.json`` (or of the run directory holding one).

    Raises:
        SlemError: none of these.
    """
    if isinstance(value, Genotype):
        return value
    if "~" in value and not Path(value).exists():
        return Genotype.parse(value, operations)
    return Genotype.load(value)


class MixedOp(nn.Module):
    """One edge of the supernet: ``sum_o w_o op_o(x)`` over the space's operations (DARTS Eq. 1;
    ``none`` adds nothing and is skipped). With ``partial_channels`` ``k > 1`` only the first
    ``C / k`` channels go through the operations and the rest pass unchanged, then the channels
    are shuffled so another part is mixed at the next edge (PC-DARTS, Xu et al., ICLR 2020, Eq.
    2): the mixed operations' activations, most of the supernet's memory, shrink ``k``-fold.

    Raises:
        SlemError: ``channels`` not divisible by ``partial_channels``.
    """

    def __init__(
        self, channels: int, operations: Sequence[str], dims: int, partial_channels: int = 1
    ) -> None:
        super().__init__()
        if partial_channels < 1 or channels % partial_channels:
            raise SlemError(
                f"partial_channels {partial_channels} must divide the channels ({channels})"
            )
        self.k = partial_channels
        self.names = list(operations)
        width = channels // partial_channels
        self.ops = nn.ModuleList(OPERATIONS[name](width, dims, False) for name in operations)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        """``x`` ``(n, C, *spatial)``, ``weights`` ``(K,)`` -> ``(n, C, *spatial)``."""
        part = x[:, : x.shape[1] // self.k] if self.k > 1 else x
        out = sum(
            (
                w * op(part)
                for name, w, op in zip(self.names, weights, self.ops, strict=True)
                if name != "none"
            ),
            torch.zeros_like(part),
        )
        if self.k == 1:
            return out
        mixed = torch.cat([out, x[:, x.shape[1] // self.k :]], dim=1)
        return _channel_shuffle(mixed, self.k)


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class Cell(nn.Module):
    """A cell of ``space``: discrete (``genotype`` given: one operation per edge, ``none`` edges
    not computed) or mixed (every edge a :class:`MixedOp`)."""

    def __init__(
        self,
        space: CellSpace,
        channels: int,
        dims: int,
        genotype: Genotype | None = None,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        self.space = space
        self.genotype = genotype
        if genotype is None:
            self.edges = nn.ModuleList(
                MixedOp(channels, space.operations, dims, partial_channels) for _ in space.edges
            )
        else:
            self.edges = nn.ModuleList(OPERATIONS[op](channels, dims, True) for op in genotype.ops)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """``x`` ``(n, C, *spatial)`` -> the last node ``(n, C, *spatial)``; ``weights``
        ``(E, K)``: the mixing weights (supernet only)."""
        nodes = [x]
        for j in range(1, self.space.nodes):
            total: Tensor = torch.zeros_like(x)
            for e, (i, t) in enumerate(self.space.edges):
                if t != j:
                    continue
                if self.genotype is None:
                    assert weights is not None, "the supernet needs mixing weights"
                    total = total + self.edges[e](nodes[i], weights[e])
                elif self.genotype.ops[e] != "none":
                    total = total + self.edges[e](nodes[i])
            nodes.append(total)
        return nodes[-1]


class CellNetwork(nn.Module):
    """A network of cells for inputs ``(n, in_channels, *spatial)`` (``dims`` spatial axes) and
    ``n_classes`` logits: a convolution stem to ``channels``, ``stages`` stages of ``cells``
    cells each, between stages a reduction (1x1 convolution doubling the channels, BatchNorm,
    average pooling halving every spatial size), global average pooling and a linear head.
    Every cell shares one architecture (NAS-Bench-201's macro skeleton, smaller).

    ``genotype`` None builds the supernet; ``forward(x, weights)`` then needs the mixing weights
    ``(E, K)`` (:class:`ArchitectureMixing`) and ``aux_skip`` ``beta`` adds ``beta * x`` to every
    cell's output (DARTS-'s auxiliary skip, see ``slem.train.nas``).

    Raises:
        SlemError: ``dims`` not 1 or 2, or a size below 1.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        space: CellSpace | None = None,
        genotype: Genotype | None = None,
        channels: int = 16,
        cells: int = 1,
        stages: int = 2,
        dims: int = 1,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise SlemError(f"a cell network is 1-D (signals) or 2-D (images), got dims={dims}")
        if min(channels, cells, stages, in_channels, n_classes) < 1:
            raise SlemError("channels, cells, stages, in_channels and n_classes must be >= 1")
        space = genotype.space if genotype is not None else (space or CellSpace())
        self.space = space
        self.genotype = genotype
        conv, norm = _conv(dims), _norm(dims)
        self.stem = nn.Sequential(
            conv(in_channels, channels, 3, padding=1, bias=False), norm(channels)
        )
        blocks: list[nn.Module] = []
        c = channels
        for stage in range(stages):
            if stage:
                pool: Any = nn.AvgPool1d(2) if dims == 1 else nn.AvgPool2d(2)
                blocks.append(
                    nn.Sequential(nn.ReLU(), conv(c, 2 * c, 1, bias=False), norm(2 * c), pool)
                )
                c *= 2
            blocks += [
                Cell(space, c, dims, genotype, partial_channels if genotype is None else 1)
                for _ in range(cells)
            ]
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            nn.ReLU(), nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        )
        self.classifier = nn.Linear(c, n_classes)

    def forward(self, x: Tensor, weights: Tensor | None = None, aux_skip: float = 0.0) -> Tensor:
        """``x`` ``(n, in_channels, *spatial)`` -> logits ``(n, n_classes)``."""
        if self.genotype is None and weights is None:
            raise SlemError("the supernet needs mixing weights (E, K); pass weights=")
        h = self.stem(x)
        for block in self.blocks:
            if isinstance(block, Cell):
                out = block(h, weights)
                h = out + aux_skip * h if aux_skip else out
            else:
                h = block(h)
        return self.classifier(self.head(h).flatten(1))


class ArchitectureMixing(Methodology):
    """The architecture parameters of DARTS (Liu, Simonyan & Yang, ICLR 2019, Sec. 2.1):
    ``alpha`` ``(E, K)``, one logit per edge and operation of a :class:`CellSpace`, initialized
    at ``1e-3 * N(0, 1)`` as in DARTS' code, and the mixing weights ``softmax(alpha / T)``
    ``(E, K)`` the supernet reads (Eq. 1).

    :meth:`genotype` derives the discrete cell: on each edge the operation of largest weight
    among all but ``exclude`` (DARTS Sec. 2.4 leaves out ``none``, whose weight says nothing
    of an operation's strength)."""

    kind: ClassVar[str] = "architecture_mixing"
    used_with: ClassVar[str] = "slem train RUN/train.yaml (the found cell, trained from scratch)"

    def __init__(
        self,
        nodes: int = 3,
        operations: Sequence[str] = DEFAULT_OPERATIONS,
        temperature: float = 1.0,
        exclude: Sequence[str] = ("none",),
    ) -> None:
        super().__init__()
        self.space = CellSpace(nodes, tuple(operations))
        if temperature <= 0:
            raise SlemError(f"temperature must be > 0, got {temperature}")
        if not set(self.space.operations) - set(exclude):
            raise SlemError("exclude leaves no operation to derive a cell from")
        self.temperature = float(temperature)
        self.exclude = tuple(exclude)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self.space.edges), len(operations)))

    def config(self) -> dict[str, Any]:
        return {
            "nodes": self.space.nodes,
            "operations": list(self.space.operations),
            "temperature": self.temperature,
            "exclude": list(self.exclude),
        }

    def forward(self, alpha: Tensor | None = None) -> Tensor:
        """The mixing weights ``(E, K)`` of ``alpha`` (default: this module's own; pass the
        hyperparameter tensor of a bilevel problem to differentiate through it)."""
        a = self.alpha if alpha is None else alpha
        return torch.softmax(a / self.temperature, dim=-1)

    def genotype(self) -> Genotype:
        """The derived cell (see the class docstring)."""
        with torch.no_grad():
            w = self.forward().clone()
        for k, op in enumerate(self.space.operations):
            if op in self.exclude:
                w[:, k] = -1.0
        ops = [self.space.operations[int(i)] for i in w.argmax(dim=1)]
        return Genotype(self.space, tuple(ops))
