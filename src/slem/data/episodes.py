"""Episodic few-shot data: batches of tasks, class pools, and seeded task samplers.

An *episode* is one small task: a support set to adapt on and a query set to score the
adapted learner on. :class:`Episodes` holds a batch of ``B`` of them as stacked tensors, so a
meta-learner can process all tasks of a meta-step at once.

- :class:`ClassImages`: a labelled pool grouped by class (Omniglot characters, or a class
  subset of Fashion-MNIST / MNIST-1D from :func:`slem.data.class_pools.class_pool`), with the
  standard class-level operations (subsets, rotations as new classes, seeded class splits).
- :class:`EpisodeSampler`: N-way K-shot classification episodes drawn from a pool.
- :class:`SinusoidTasks`: the sinusoid regression family of Finn et al. (2017, MAML).

Both samplers follow :class:`TaskSampler`: ``sample(tasks)``, a seeded ``torch.Generator``
(``generator``) and ``state_dict`` / ``load_state_dict`` of that generator, so a resumed
meta-training run draws exactly the episodes it would have drawn.

Typical use::

    from slem.data import EpisodeSampler, load_omniglot

    pool = load_omniglot(None, "small1")                   # 136 characters, 20 images each
    train, val = pool.split_classes(0.8, seed=0)           # split characters, then rotate
    sampler = EpisodeSampler(train.with_rotations(), ways=5, shots=1, queries=15, seed=0)
    batch = sampler.sample(32)                             # support_x: (32, 5, 1, 28, 28)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from slem.errors import SlemError

#: the rotations of the standard Omniglot class augmentation (degrees, counter-clockwise)
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True, eq=False)
class Episodes:
    """A batch of ``B`` few-shot tasks (episodes), each a support set and a query set.

    - ``support_x``: ``(B, S, *shape)`` float32 inputs; ``query_x``: ``(B, Q, *shape)``.
    - ``support_y`` / ``query_y``: ``(B, S)`` / ``(B, Q)`` int64 labels ``0..ways-1`` for
      classification, ``(B, S, 1)`` / ``(B, Q, 1)`` float32 targets for regression.
    - ``ways``: classes per task (``N``); 0 for regression.
    - ``info``: per-task extras, every tensor with leading dimension ``B`` (the sinusoid's
      ``amplitude`` and ``phase`` ``(B,)``; the sampler's pool ``classes`` ``(B, N)`` and pool
      rows ``support_index`` ``(B, S)`` / ``query_index`` ``(B, Q)``).

    Classification episodes are ordered class by class: the support holds class 0's ``K``
    shots, then class 1's, ..., so ``support_y[b] == arange(N).repeat_interleave(K)``, and the
    query likewise with ``Q / N`` examples per class.

    Raises :class:`~slem.errors.SlemError` when the tensors' leading dimensions disagree.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int
    info: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sx, qx = self.support_x, self.query_x
        b = sx.shape[0] if sx.dim() >= 2 else -1
        for label, t, like in (
            ("support_x", sx, sx),
            ("support_y", self.support_y, sx),
            ("query_x", qx, sx),
            ("query_y", self.query_y, qx),
        ):
            pair = label == "query_x"  # the query may differ in size, not in tasks
            if (
                t.dim() < 2
                or like.dim() < 2
                or t.shape[0] != b
                or (not pair and t.shape[1] != like.shape[1])
            ):
                raise SlemError(
                    f"Episodes: {label} has shape {tuple(t.shape)}, which does not match "
                    f"support_x {tuple(sx.shape)} / query_x {tuple(qx.shape)}; every tensor "
                    "is (tasks, examples, ...) with one row of y per row of x"
                )
        if self.ways < 0:
            raise SlemError(f"Episodes: ways must be >= 0 (0 for regression), got {self.ways}")
        for key, t in self.info.items():
            if t.dim() == 0 or t.shape[0] != b:
                raise SlemError(
                    f"Episodes: info['{key}'] has shape {tuple(t.shape)}; its first dimension "
                    f"must be the number of tasks ({b})"
                )

    @property
    def tasks(self) -> int:
        """The number of tasks ``B``."""
        return int(self.support_x.shape[0])

    def task(self, i: int) -> Episodes:
        """Task ``i`` alone, keeping a leading dimension of 1 (negative ``i`` counts back)."""
        if not -self.tasks <= i < self.tasks:
            raise SlemError(f"task index {i} is out of range for {self.tasks} tasks")
        i %= self.tasks
        pick = slice(i, i + 1)
        return Episodes(
            self.support_x[pick],
            self.support_y[pick],
            self.query_x[pick],
            self.query_y[pick],
            self.ways,
            {k: v[pick] for k, v in self.info.items()},
        )

    def to(self, device: torch.device | str) -> Episodes:
        """The same episodes with every tensor (``info`` included) on ``device``."""
        return Episodes(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            self.ways,
            {k: v.to(device) for k, v in self.info.items()},
        )


class ClassImages:
    """A labelled pool grouped by class: the source of N-way K-shot episodes.

    ``x``: ``(n, *shape)`` float32 examples (a NumPy array or tensor; floating, converted to
    float32); ``y``: ``(n,)`` int64 labels in ``0..C-1`` with ``C = len(class_names)``;
    ``name``: where the pool came from (shown in error messages).

    Raises :class:`~slem.errors.SlemError` for mismatched lengths, labels out of range,
    non-floating ``x`` or no classes.
    """

    def __init__(
        self,
        x: Tensor | np.ndarray,
        y: Tensor | np.ndarray,
        class_names: Sequence[str],
        name: str,
    ) -> None:
        xt = torch.as_tensor(x)
        yt = torch.as_tensor(y)
        if not xt.is_floating_point() or xt.dim() < 2:
            raise SlemError(
                f"class pool '{name}': x must be a floating (n, *shape) array, got "
                f"{xt.dtype} of shape {tuple(xt.shape)} (scale images to [0, 1] first)"
            )
        if yt.dim() != 1 or yt.is_floating_point() or yt.is_complex() or len(yt) != len(xt):
            raise SlemError(
                f"class pool '{name}': y must be (n,) integer labels with n = {len(xt)} "
                f"(the rows of x), got {yt.dtype} of shape {tuple(yt.shape)}"
            )
        if not class_names:
            raise SlemError(f"class pool '{name}' has no classes; give at least one class name")
        self.x: Tensor = xt.to(torch.float32)
        self.y: Tensor = yt.to(torch.int64)
        self.class_names: list[str] = [str(c) for c in class_names]
        self.name = name
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.classes):
            raise SlemError(
                f"class pool '{name}': labels must lie in 0..{self.classes - 1} "
                f"(one per class name), got {int(self.y.min())}..{int(self.y.max())}"
            )
        self._counts = torch.bincount(self.y.cpu(), minlength=self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return (
            f"ClassImages('{self.name}', {len(self)} examples of shape {self.shape}, "
            f"{self.classes} classes)"
        )

    @property
    def classes(self) -> int:
        """The number of classes ``C``."""
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. ``(1, 28, 28)``."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def class_counts(self) -> Tensor:
        """``(C,)`` int64: the number of examples of each class."""
        return self._counts.clone()

    @property
    def per_class_min(self) -> int:
        """The fewest examples of any class (bounds ``shots + queries``)."""
        return int(self._counts.min())

    def subset(self, classes: Sequence[int]) -> ClassImages:
        """The examples of ``classes`` only, relabelled ``0..len(classes)-1`` in the given order.

        Raises :class:`~slem.errors.SlemError` for an empty list, repeats or ids out of range.
        """
        ids = class_ids(classes, self.classes, f"class pool '{self.name}'")
        remap = torch.full((self.classes,), -1, dtype=torch.int64)
        remap[torch.tensor(ids)] = torch.arange(len(ids))
        new = remap[self.y.cpu()]
        rows = torch.nonzero(new >= 0).squeeze(1)
        rows = rows[torch.argsort(new[rows], stable=True)]  # grouped by new label, order kept
        return ClassImages(
            self.x[rows.to(self.x.device)],
            new[rows].to(self.y.device),
            [self.class_names[c] for c in ids],
            self.name,
        )

    def with_rotations(self, angles: Sequence[int] = ROTATIONS) -> ClassImages:
        """Each rotation of each class as a new class (Santoro et al. 2016; Vinyals et al. 2016).

        Rotation by ``a`` degrees is ``torch.rot90(x, a // 90, dims=(-2, -1))``
        (counter-clockwise). The new labels are angle-major: ``j * C + c`` is class ``c``
        rotated by ``angles[j]``, so with ``angles[0] == 0`` the first ``C`` classes are the
        originals. Names get ``"@90"``, ``"@180"``, ...; angle 0 keeps the name.

        Only for square images ``(..., h, w)`` with ``h == w``. For Omniglot, split the
        characters (:meth:`split_classes`) *before* rotating, or the rotations of one character
        end up on both sides of the split. Raises :class:`~slem.errors.SlemError` for
        non-square examples or angles other than distinct multiples of 90 in 0..270.
        """
        shape = self.shape
        if len(shape) < 2 or shape[-1] != shape[-2]:
            raise SlemError(
                f"class pool '{self.name}': rotations need square images (..., h, w) with "
                f"h == w, but its examples have shape {shape}"
            )
        given = [int(a) for a in angles]
        if not given or len(set(given)) != len(given) or any(a not in ROTATIONS for a in given):
            raise SlemError(
                f"rotation angles must be distinct values among 0, 90, 180, 270 degrees, "
                f"got {list(angles)}"
            )
        xs = [torch.rot90(self.x, a // 90, dims=(-2, -1)) for a in given]
        ys = [self.y + j * self.classes for j in range(len(given))]
        names = [n if a == 0 else f"{n}@{a}" for a in given for n in self.class_names]
        return ClassImages(torch.cat(xs), torch.cat(ys), names, self.name)

    def split_classes(self, fraction: float, seed: int) -> tuple[ClassImages, ClassImages]:
        """A seeded split of the classes: ``round(fraction * C)`` of them, and the rest.

        E.g. meta-train / meta-validation characters. Each side keeps its classes in the
        original order (relabelled from 0). Raises :class:`~slem.errors.SlemError` when
        ``fraction`` is outside (0, 1) or leaves a side empty.
        """
        k = round(fraction * self.classes)
        if not 0.0 < fraction < 1.0 or not 0 < k < self.classes:
            raise SlemError(
                f"split_classes: fraction {fraction} of {self.classes} classes leaves a side "
                f"empty; use a fraction strictly between 0 and 1 that keeps at least one class "
                f"on each side"
            )
        perm = torch.randperm(self.classes, generator=torch.Generator().manual_seed(seed))
        first = sorted(int(c) for c in perm[:k])
        second = sorted(int(c) for c in perm[k:])
        return self.subset(first), self.subset(second)


@runtime_checkable
class TaskSampler(Protocol):
    """What a meta-training loop needs from a source of episodes."""

    generator: torch.Generator

    def sample(self, tasks: int) -> Episodes:
        """A batch of ``tasks`` fresh episodes."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """The random state, to resume drawing exactly where a run stopped."""
        ...

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a :meth:`state_dict`."""
        ...


class SeededSampler:
    """The random state both samplers share: a CPU ``torch.Generator`` seeded with ``seed``.

    Every draw goes through ``generator``, so the same seed gives identical episodes and
    ``load_state_dict(state_dict())`` resumes the exact stream.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, Tensor]:
        """``{"generator": uint8 tensor}``: the generator's state (a copy)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore a :meth:`state_dict`; a one-line :class:`~slem.errors.SlemError` if it is
        not one (say, a checkpoint of another sampler kind)."""
        saved = state.get("generator") if isinstance(state, Mapping) else None
        current = self.generator.get_state()
        if (
            not isinstance(saved, Tensor)
            or saved.dtype != torch.uint8
            or saved.shape != current.shape
        ):
            raise SlemError(
                f"{type(self).__name__}.load_state_dict: expected {{'generator': a uint8 "
                f"tensor of {len(current)} bytes}} from state_dict(), got {_describe(state)}"
            )
        self.generator.set_state(saved.detach().cpu().clone())

    @staticmethod
    def _check_tasks(tasks: int) -> int:
        if isinstance(tasks, bool) or not isinstance(tasks, int | np.integer) or tasks < 1:
            raise SlemError(f"sample(tasks): tasks must be a positive integer, got {tasks!r}")
        return int(tasks)


def _describe(state: object) -> str:
    if isinstance(state, Mapping):
        return "{" + ", ".join(f"{k!r}: {type(v).__name__}" for k, v in state.items()) + "}"
    return type(state).__name__


def _positive(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise SlemError(f"{what} must be a positive integer (at least 1), got {value!r}")
    return int(value)


class EpisodeSampler(SeededSampler):
    """N-way K-shot classification episodes from a :class:`ClassImages` pool.

    Each task picks ``ways`` distinct pool classes at random (label ``i`` is the ``i``-th
    picked class, so the label assignment is random per task), then ``shots + queries``
    distinct examples of each: the first ``shots`` go to the support, the rest to the query.
    ``sample(B)`` gives support ``(B, ways * shots, *shape)`` and query
    ``(B, ways * queries, *shape)``, ordered class by class (see :class:`Episodes`), with
    ``info`` ``classes`` ``(B, ways)`` (pool class ids) and ``support_index`` /
    ``query_index`` (pool rows).

    Draws are vectorized over tasks and classes (one ``torch.rand`` per batch for the classes
    and one for the examples) from ``generator``, a CPU ``torch.Generator`` seeded with
    ``seed``; the same seed gives identical episodes. Episodes are on the pool's device.

    Raises :class:`~slem.errors.SlemError` for ``ways < 2``, ``shots < 1``, ``queries < 1``,
    more ways than pool classes, or ``shots + queries`` above the smallest class.
    """

    def __init__(
        self, pool: ClassImages, ways: int, shots: int, queries: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        if isinstance(ways, bool) or not isinstance(ways, int | np.integer) or ways < 2:
            raise SlemError(f"ways must be an integer of at least 2, got {ways!r}")
        self.ways = int(ways)
        self.shots = _positive("shots", shots)
        self.queries = _positive("queries", queries)
        if self.ways > pool.classes:
            raise SlemError(
                f"{self.ways}-way episodes need {self.ways} classes, but the pool "
                f"'{pool.name}' has only {pool.classes} classes; lower ways"
            )
        counts = pool.class_counts
        need = self.shots + self.queries
        if need > pool.per_class_min:
            c = int(torch.argmin(counts))
            raise SlemError(
                f"class {c} ('{pool.class_names[c]}') of pool '{pool.name}' has only "
                f"{int(counts[c])} examples; shots + queries must be <= {int(counts[c])} "
                f"(got {self.shots} + {self.queries})"
            )
        self.pool = pool
        # the pool index by class, built once: rows of class c are
        # order[offsets[c] : offsets[c] + counts[c]]
        self._counts = counts
        self._order = torch.argsort(pool.y.cpu(), stable=True)
        self._offsets = torch.cumsum(counts, 0) - counts
        self._widest = int(counts.max())

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.pool!r}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, seed={self.seed})"
        )

    def sample(self, tasks: int) -> Episodes:
        """``tasks`` fresh N-way K-shot episodes (see the class docstring for the layout)."""
        b = self._check_tasks(tasks)
        n, k, q = self.ways, self.shots, self.queries
        g = self.generator
        f32 = torch.float32  # fixed, so the draws do not depend on torch's default dtype
        classes = torch.rand(b, self.pool.classes, generator=g, dtype=f32)
        classes = classes.argsort(dim=1, stable=True)[:, :n]  # (B, N) distinct per task
        keys = torch.rand(b, n, self._widest, generator=g, dtype=f32)
        beyond = torch.arange(self._widest) >= self._counts[classes].unsqueeze(-1)
        keys.masked_fill_(beyond, 2.0)  # never picked: rand < 1 and k + q <= every count
        pos = keys.topk(k + q, dim=-1, largest=False, sorted=True).indices  # (B, N, K+Q)
        rows = self._order[self._offsets[classes].unsqueeze(-1) + pos]
        support = rows[:, :, :k].reshape(b, n * k)
        query = rows[:, :, k:].reshape(b, n * q)
        device = self.pool.x.device
        labels = torch.arange(n, device=device)
        return Episodes(
            support_x=self.pool.x[support.to(device)],
            support_y=labels.repeat_interleave(k).repeat(b, 1),
            query_x=self.pool.x[query.to(device)],
            query_y=labels.repeat_interleave(q).repeat(b, 1),
            ways=n,
            info={
                "classes": classes.to(device),
                "support_index": support.to(device),
                "query_index": query.to(device),
            },
        )


class SinusoidTasks(SeededSampler):
    """The sinusoid regression tasks of Finn et al. (2017): ``y = A sin(x - phase)``.

    Per task ``A ~ U[amplitude]`` (default 0.1..5), ``phase ~ U[phase]`` (default 0..pi), and
    every input ``x ~ U[x_range]`` (default -5..5), drawn from ``generator`` (seeded with
    ``seed``). ``sample(B)`` gives ``x`` ``(B, shots, 1)`` / ``(B, queries, 1)`` and targets of
    the same shape, all float32, ``ways = 0``, and ``info`` ``amplitude`` and ``phase`` ``(B,)``.

    Raises :class:`~slem.errors.SlemError` for ``shots < 1``, ``queries < 1`` or a range whose
    low end exceeds its high end.
    """

    def __init__(
        self,
        shots: int,
        queries: int,
        seed: int = 0,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        super().__init__(seed)
        self.shots = _positive("shots", shots)
        self.queries = _positive("queries", queries)
        for what, (low, high) in (
            ("amplitude", amplitude),
            ("phase", phase),
            ("x_range", x_range),
        ):
            if not low <= high:
                raise SlemError(
                    f"SinusoidTasks: {what} must be (low, high) with low <= high, "
                    f"got ({low}, {high})"
                )
        self.amplitude = (float(amplitude[0]), float(amplitude[1]))
        self.phase = (float(phase[0]), float(phase[1]))
        self.x_range = (float(x_range[0]), float(x_range[1]))

    def __repr__(self) -> str:
        return (
            f"SinusoidTasks(shots={self.shots}, queries={self.queries}, seed={self.seed}, "
            f"amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range})"
        )

    def _uniform(self, bounds: tuple[float, float], *shape: int) -> Tensor:
        low, high = bounds
        draw = torch.rand(*shape, generator=self.generator, dtype=torch.float32)
        return low + (high - low) * draw

    def sample(self, tasks: int) -> Episodes:
        """``tasks`` fresh sinusoid tasks (see the class docstring for the shapes)."""
        b = self._check_tasks(tasks)
        amplitude = self._uniform(self.amplitude, b)
        phase = self._uniform(self.phase, b)
        x = self._uniform(self.x_range, b, self.shots + self.queries, 1)
        y = self.curve(amplitude, phase, x)
        k = self.shots
        return Episodes(
            support_x=x[:, :k],
            support_y=y[:, :k],
            query_x=x[:, k:],
            query_y=y[:, k:],
            ways=0,
            info={"amplitude": amplitude, "phase": phase},
        )

    @staticmethod
    def curve(amplitude: Tensor | float, phase: Tensor | float, x: Tensor) -> Tensor:
        """``amplitude * sin(x - phase)``.

        ``amplitude`` and ``phase`` are floats, or ``(B,)`` tensors of one value per task for
        ``x`` of shape ``(B, ...)`` (such as ``Episodes.info['amplitude']`` with
        ``query_x``); other tensor shapes broadcast against ``x`` as usual.
        """

        def per_task(v: Tensor | float) -> Tensor | float:
            if isinstance(v, Tensor) and v.dim() == 1 and x.dim() > 1:
                return v.reshape(-1, *([1] * (x.dim() - 1)))
            return v

        return per_task(amplitude) * torch.sin(x - per_task(phase))


def class_ids(classes: Sequence[int], n_classes: int, what: str, detail: str = "") -> list[int]:
    """``classes`` as a list of distinct ints in ``0..n_classes - 1``.

    Raises:
        SlemError: an empty list, repeats or ids out of range (one line naming ``what``;
            ``detail`` is added after the range).
    """
    ids = [int(c) for c in classes]
    bad = [c for c in ids if not 0 <= c < n_classes]
    if not ids or bad or len(set(ids)) != len(ids):
        raise SlemError(
            f"{what}: classes must be distinct ids in 0..{n_classes - 1}{detail}, got {ids}"
        )
    return ids
