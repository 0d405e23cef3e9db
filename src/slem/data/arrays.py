"""A :class:`~slem.data.Task` from arrays or tensors already in memory, in one call.

:func:`task_from_arrays` (also :meth:`Task.from_arrays`) takes NumPy arrays or torch tensors
(any device) and makes a task exactly as :func:`~slem.data.make_task` makes one from a
dataset: a stratified validation split, a test split (``x_test``/``y_test``, or a stratified
``test_fraction`` of ``x``), and an optional trusted meta set (``x_meta``/``y_meta``, or
``meta_per_class`` samples drawn from ``x`` before anything else). Labels are taken as given
(they may be noisy); slem never corrupts them. Inputs are used as given too (``normalize``
off by default), so a model trained on the task works on your own inputs unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np

from slem.data.config import parse_data_config
from slem.data.dataset import Dataset, TaskType
from slem.data.task import Split, Task, make_task
from slem.errors import SlemError

SOURCE = "arrays given in Python"


def task_from_arrays(
    x: Any,
    y: Any,
    *,
    x_meta: Any = None,
    y_meta: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    task_type: Literal["auto", "classification", "regression"] = "auto",
    class_names: Sequence[str] | None = None,
    y_true: Any = None,
    name: str = "arrays",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    meta_per_class: int | None = None,
    meta_size: int | None = None,
    n_groups: int = 3,
    normalize: bool = False,
    seed: int = 0,
) -> Task:
    """Make a task from ``x`` (shape ``(n, ...)``: ``(n, features)`` for tables, ``(n, c, h,
    w)`` for images) and ``y`` (shape ``(n,)``), NumPy arrays or torch tensors.

    ``task_type`` ``auto``: integer (or boolean, or string) labels make a classification
    task, floating-point ones a regression task; say ``classification`` for classes stored
    as floats. Class labels are ``0..C-1`` (``class_names`` may name them; ``C`` is
    ``len(class_names)`` or the largest label + 1), or any other values (negative numbers,
    strings), which are encoded as ``0..C-1`` in sorted order (the task's ``class_names``
    then hold the original values). ``y_true``: the clean labels of ``x``, when you know
    them (analysis only: the noise rate, and how well learned weights separate clean from
    noisy samples; never used for training). ``x_meta``/``y_meta``: a trusted meta set, or
    ``meta_per_class`` (``meta_size`` for regression) samples drawn from ``x``.
    ``normalize``: standardize inputs with training statistics (``task.normalizer`` then
    applies the same to new inputs). Splits are seeded by ``seed``.

    Raises:
        SlemError: a shape that does not fit (rows of ``x`` and ``y``, a sample shape that
            differs between splits, ``y`` that is not one label per sample), a half-given
            split, labels that do not fit ``task_type`` or ``class_names``, a class with fewer
            than 2 samples, or an invalid split option; one line naming the argument.
    """
    X = _inputs(x, "x")
    Y = _labels(y, "y", len(X), "x")
    splits = {"meta": (x_meta, y_meta), "test": (x_test, y_test)}
    given: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (xs, ys) in splits.items():
        if (xs is None) != (ys is None):
            raise SlemError(f"x_{split} and y_{split} must be given together")
        if xs is not None:
            Xs = _inputs(xs, f"x_{split}")
            if Xs.shape[1:] != X.shape[1:]:
                raise SlemError(
                    f"x_{split} has samples of shape {tuple(Xs.shape[1:])} but x has "
                    f"{tuple(X.shape[1:])}; every split needs the same sample shape"
                )
            given[split] = (Xs, _labels(ys, f"y_{split}", len(Xs), f"x_{split}"))
    if x_meta is not None and (meta_per_class is not None or meta_size is not None):
        raise SlemError("give x_meta/y_meta or meta_per_class (meta_size), not both")
    truth = _labels(y_true, "y_true", len(X), "x") if y_true is not None else None
    kind = _task_type(Y, task_type)
    labelled = [Y, *(ys for _, ys in given.values()), *([truth] if truth is not None else [])]
    names, encode = _classes(labelled, class_names) if kind == "classification" else ((), None)
    if encode is not None:
        Y = encode(Y)
        given = {k: (xs, encode(ys)) for k, (xs, ys) in given.items()}
        truth = encode(truth) if truth is not None else None
        _check_class_sizes(Y, names)
    else:
        Y = _numeric(Y, "y").astype(np.float32)
        given = {
            k: (xs, _numeric(ys, f"y_{k}").astype(np.float32)) for k, (xs, ys) in given.items()
        }
    test, meta = given.get("test"), given.get("meta")
    dataset = Dataset(
        name=name,
        X=X,
        y=Y,
        task_type=kind,
        source=SOURCE,
        license="yours",
        class_names=names,
        X_test=test[0] if test else None,
        y_test=test[1] if test else None,
        X_meta=meta[0] if meta else None,
        y_meta=meta[1] if meta else None,
        user_data=True,
        test_file="x_test, y_test" if test else None,
        meta_file="x_meta, y_meta" if meta else None,
    )
    config = parse_data_config(
        {
            "name": name,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "meta_per_class": meta_per_class,
            "meta_size": meta_size,
            "n_groups": n_groups,
            "normalize": normalize,
            "seed": seed,
        },
        prefix="Task.from_arrays",
    )
    task = make_task(dataset, config)
    return _with_truth(task, truth) if truth is not None else task


def _inputs(value: Any, what: str) -> np.ndarray:
    array = _numpy(value, what)
    if array.ndim < 2:
        raise SlemError(
            f"{what} has shape {tuple(array.shape)}; it needs one row per sample, shape (n, "
            f"features) or (n, channels, ...) (one feature: {what}.reshape(-1, 1))"
        )
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise SlemError(f"{what} holds {array.dtype} values; inputs must be numbers")
    return array.astype(np.float32)


def _labels(value: Any, what: str, rows: int, of: str) -> np.ndarray:
    array = _numpy(value, what)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise SlemError(
            f"{what} has shape {tuple(array.shape)}; it needs one label or target per sample, "
            f"shape (n,) (one-hot labels: {what}.argmax(1))"
        )
    if len(array) != rows:
        raise SlemError(f"{of} has {rows} rows but {what} has {len(array)}; give one per row")
    return array


def _numpy(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, on any device
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise SlemError(f"{what} is not an array: {exc}") from None


def _numeric(array: np.ndarray, what: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.number):
        raise SlemError(f"{what} holds {array.dtype} values; regression targets must be numbers")
    return array


def _task_type(y: np.ndarray, asked: str) -> TaskType:
    if asked == "classification":
        return "classification"
    if asked == "regression":
        return "regression"
    if asked != "auto":
        raise SlemError(f"task_type must be auto, classification or regression, not {asked!r}")
    return "regression" if np.issubdtype(y.dtype, np.floating) else "classification"


def _classes(labels: list[np.ndarray], names: Sequence[str] | None) -> tuple[tuple[str, ...], Any]:
    """The class names and the function that maps given labels to ``0..C-1``."""
    every = np.concatenate([np.asarray(a).reshape(-1) for a in labels])
    if np.issubdtype(every.dtype, np.floating):
        if not np.all(np.isfinite(every)) or not np.all(every == np.round(every)):
            raise SlemError(
                "class labels must be whole numbers; these are fractional (for a numeric "
                "target use task_type='regression')"
            )
        every = every.astype(np.int64)
        labels = [a.astype(np.int64) for a in labels]
    integer = np.issubdtype(every.dtype, np.integer) or every.dtype == np.bool_
    if integer and (len(every) == 0 or every.min() >= 0):
        n = int(every.max()) + 1 if len(every) else 0
        if names is not None:
            if len(names) < n:
                raise SlemError(
                    f"class_names has {len(names)} names but the labels run up to {n - 1}"
                )
            n = len(names)
        chosen = tuple(names) if names is not None else tuple(str(c) for c in range(n))
        return chosen, lambda a: np.asarray(a).astype(np.int64)
    values = np.unique(every)
    if names is not None and len(names) != len(values):
        raise SlemError(
            f"class_names has {len(names)} names for {len(values)} distinct labels; labels "
            "other than 0..C-1 are named by their values"
        )
    chosen = tuple(names) if names is not None else tuple(str(v) for v in values)
    return chosen, lambda a: np.searchsorted(values, np.asarray(a)).astype(np.int64)


def _check_class_sizes(y: np.ndarray, names: tuple[str, ...]) -> None:
    counts = np.bincount(y, minlength=len(names))
    small = np.flatnonzero(counts < 2)
    if len(small):
        c = int(small[0])
        raise SlemError(
            f"class {names[c]!r} has {counts[c]} sample(s) in y; every class 0..{len(names) - 1} "
            "needs at least 2 (labels must be 0..C-1 with every class present)"
        )


def _with_truth(task: Task, truth: np.ndarray) -> Task:
    """The task with ``y_true`` and the noisy mask of every split drawn from ``x``."""

    def mark(split: Split) -> Split:
        clean = truth[split.index]
        return Split(split.X, split.y, clean, split.y != clean, split.index)

    def drawn(split: Split, kind: str) -> Split:
        return mark(split) if task.splits.get(kind, "").startswith("drawn from") else split

    return replace(
        task,
        train=mark(task.train),
        val=mark(task.val),
        test=drawn(task.test, "test"),
        meta=drawn(task.meta, "meta") if task.meta is not None else None,
        y_true_given=True,
    )
