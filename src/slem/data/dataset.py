"""The uniform result of every loader.

A :class:`Dataset` is raw, unsplit data plus what a user needs to know about it: whether it
is classification or regression, the class names, where it came from and under which licence,
and any preprocessing the loader applied (label encoding, dropped columns). Some sources ship
an official test split (Fashion-MNIST, MNIST-1D); it is kept apart so tasks can use it.

A user's own file (``user_data``) is taken as it is: its labels are "as given" (perhaps noisy),
slem corrupts it only when asked to, and a trusted meta set or test set can come from separate
files (``meta_file`` / ``test_file``) encoded exactly like the training file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from slem.errors import SlemError

if TYPE_CHECKING:
    from slem.data.tabular import TableEncoder

TaskType = Literal["classification", "regression"]


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` (a flat table ``(n, d)`` or images ``(n, c, h, w)``) and targets ``y``.

    ``y`` holds integer labels ``0..C-1`` for classification and floats for regression.
    ``X_test``/``y_test`` are the source's official test split, when it has one, or the
    user's test file (``test_file``); ``X_meta``/``y_meta`` the user's trusted meta-set file
    (``meta_file``). ``user_data`` marks the user's own data (labels as given, not known to be
    clean). ``notes`` records every change a loader made to the user's data (encodings,
    drops), so nothing happens silently.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    task_type: TaskType
    source: str
    license: str
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    user_data: bool = False
    X_meta: np.ndarray | None = None
    y_meta: np.ndarray | None = None
    test_file: str | None = None
    meta_file: str | None = None
    #: how a table's columns became ``X`` and its labels ``y`` (None: not a table), to encode
    #: new rows the same way (``slem predict``)
    encoder: TableEncoder | None = None

    def __post_init__(self) -> None:
        if len(self.X) != len(self.y):
            raise SlemError(
                f"dataset '{self.name}': X has {len(self.X)} rows but y has {len(self.y)}"
            )
        if (self.X_test is None) != (self.y_test is None):
            raise SlemError(f"dataset '{self.name}': X_test and y_test must be given together")
        if (self.X_meta is None) != (self.y_meta is None):
            raise SlemError(f"dataset '{self.name}': X_meta and y_meta must be given together")
        if self.is_classification:
            for labels in (self.y, self.y_test, self.y_meta):
                if (
                    labels is not None
                    and len(labels)
                    and (labels.min() < 0 or labels.max() >= self.n_classes)
                ):
                    raise SlemError(
                        f"dataset '{self.name}': labels must lie in 0..{self.n_classes - 1}"
                    )

    @property
    def is_classification(self) -> bool:
        return self.task_type == "classification"

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(d,)`` for tables, ``(c, h, w)`` or ``(c, L)`` for signals."""
        return tuple(int(s) for s in self.X.shape[1:])

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def has_official_test(self) -> bool:
        return self.X_test is not None

    def with_notes(self, *notes: str) -> Dataset:
        return replace(self, notes=self.notes + tuple(notes))

    def subsample(self, size: int, seed: int) -> Dataset:
        """Keep ``size`` samples of the training pool (stratified for classification).

        The official test split and a meta-set file, if any, are left untouched.
        """
        if size >= len(self.y):
            return self
        if size < 1:
            raise SlemError(f"size must be a positive number of samples, got {size}")
        rng = np.random.default_rng([seed, 0x5A3])
        if self.is_classification:
            from sklearn.model_selection import train_test_split

            try:
                keep, _ = train_test_split(
                    np.arange(len(self.y)), train_size=size, stratify=self.y, random_state=seed
                )
            except ValueError:  # a class too small to stratify: fall back to uniform sampling
                keep = rng.choice(len(self.y), size=size, replace=False)
        else:
            keep = rng.choice(len(self.y), size=size, replace=False)
        keep = np.sort(keep)
        return replace(
            self,
            X=self.X[keep],
            y=self.y[keep],
            notes=(*self.notes, f"subsampled the training pool to {size} of {len(self.y)}"),
        )

    def drop_rare_classes(self, min_count: int) -> Dataset:
        """Remove classes with fewer than ``min_count`` samples and renumber the rest."""
        if not self.is_classification or min_count <= 1:
            return self
        counts = np.bincount(self.y, minlength=self.n_classes)
        kept = np.flatnonzero(counts >= min_count)
        if len(kept) == self.n_classes:
            return self
        if len(kept) < 2:
            raise SlemError(
                f"dataset '{self.name}': fewer than 2 classes have at least {min_count} samples"
            )
        remap = np.full(self.n_classes, -1, dtype=np.int64)
        remap[kept] = np.arange(len(kept))
        dropped = [self.class_names[c] for c in range(self.n_classes) if counts[c] < min_count]
        mask = remap[self.y] >= 0
        X_test, y_test = _keep_kept(self.X_test, self.y_test, remap)
        X_meta, y_meta = _keep_kept(self.X_meta, self.y_meta, remap)
        return replace(
            self,
            X=self.X[mask],
            y=remap[self.y[mask]],
            X_test=X_test,
            y_test=y_test,
            X_meta=X_meta,
            y_meta=y_meta,
            class_names=tuple(self.class_names[c] for c in kept),
            encoder=self.encoder.renumbered(remap) if self.encoder is not None else None,
            notes=(
                *self.notes,
                f"dropped {len(dropped)} classes with fewer than {min_count} samples: "
                + ", ".join(dropped[:10])
                + (" ..." if len(dropped) > 10 else ""),
            ),
        )


def _keep_kept(
    X: np.ndarray | None, y: np.ndarray | None, remap: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Rows of a held-apart split whose class is kept, renumbered with ``remap``."""
    if X is None or y is None:
        return X, y
    keep = remap[y] >= 0
    return X[keep], remap[y[keep]]
