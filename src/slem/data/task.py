"""A :class:`Task`: the learning problem a methodology is trained on or applied to.

:func:`make_task` builds one from a :class:`Dataset` in a fixed order, each stage with its own
seeded generator (changing the noise rate leaves the splits exactly as they were):

1. **test**: the source's official test split (or the user's ``data.test`` file), else a
   stratified ``test_fraction``; never corrupted by slem.
2. **meta**: the user's trusted ``data.meta`` file, or ``meta_per_class`` samples per class
   (``meta_size`` for regression) drawn from the training pool before any corruption; these
   samples never enter the training split.
3. **val**: a stratified ``val_fraction`` of the rest of the pool.
4. **imbalance**: the same long-tail profile applied to train and to val separately, so the
   training split follows the requested head/tail ratio exactly (up to flooring).
5. **noise**: label or target noise on train and val, each seeded separately. Val is thus
   corrupted exactly like train, so selecting epochs or models on it uses no clean labels.
6. **normalize**: inputs standardized with statistics of the training split only.

A user's own file is taken as it is: its labels are "as given" (they may be noisy), so test
and meta labels drawn from it are not clean, and the task says so (:attr:`Task.test_labels`,
:attr:`Task.splits`). Synthetic noise or imbalance on it (steps 4-5) is a one-line error unless
``synthetic_corruption`` asks for it; when on, :attr:`Task.synthetic_corruption` says what.

This module holds :class:`Task`, :func:`make_task` and :func:`build_task`; the stages live
beside it and their public names are re-exported here: the splits' parts (:class:`Split`,
:class:`Normalizer`, :class:`TaskFeatures`, :func:`group_by_size`) in
:mod:`slem.data.task_parts`, the drawing of indices in :mod:`slem.data.task_sampling`, and
corruption, normalization and provenance in :mod:`slem.data.task_corruption`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slem.data.config import DataConfig, NoiseSpec, parse_data_config
from slem.data.corruption import long_tail
from slem.data.dataset import Dataset, TaskType
from slem.data.splits import stage_rng, take_fraction
from slem.data.tabular import TableEncoder
from slem.data.task_corruption import TRUSTED as TRUSTED
from slem.data.task_corruption import LabelKind as LabelKind
from slem.data.task_corruption import (
    apply_normalizer,
    check_config_fits,
    corrupt_split,
    describe_synthetic,
    provenance_fields,
)
from slem.data.task_parts import Normalizer as Normalizer
from slem.data.task_parts import Split as Split
from slem.data.task_parts import TaskFeatures as TaskFeatures
from slem.data.task_parts import group_by_size as group_by_size
from slem.data.task_parts import task_features
from slem.data.task_sampling import draw_meta, generated_size, split_train_val
from slem.errors import SlemError


@dataclass(frozen=True)
class Task:
    """Train / optional meta / val / test splits of one dataset, plus what was done to them."""

    name: str
    task_type: TaskType
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    meta: Split | None
    features: TaskFeatures
    noise: NoiseSpec | None
    imbalance: float | None
    transition: np.ndarray | None  # the label-noise transition the training labels came from
    normalizer: Normalizer | None
    seed: int
    source: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: instance-dependent noise: row k is the distribution training label k was drawn from
    transition_rows: np.ndarray | None = None
    #: where each split came from and what its labels are, e.g. ``{"test": "test.csv (trusted
    #: file)"}``; keys train, val, test and (with a meta set) meta
    splits: dict[str, str] = field(default_factory=dict)
    #: what the test labels are: ``clean`` (a benchmark, never corrupted by slem),
    #: ``as_given`` (drawn from the user's file: possibly noisy) or ``trusted_file`` (data.test)
    test_labels: LabelKind = "clean"
    #: the same for the meta set (None without one)
    meta_labels: LabelKind | None = None
    #: the synthetic corruption slem added to train and val, in words (None: none)
    synthetic_corruption: str | None = None
    #: the user's own data (labels as given, not known to be clean)
    user_data: bool = False
    #: how a table's columns became inputs and labels (None: not a table); with
    #: ``normalizer`` it is the task's preprocessing (:class:`slem.data.Preprocessing`)
    encoder: TableEncoder | None = None
    #: the user gave the true labels of their data (``Task.from_arrays(..., y_true=...)``)
    y_true_given: bool = False
    #: the names of the input features, one per column of a flattened input, when the
    #: source has them (scikit-learn's tables; a file's encoded columns); else empty
    feature_names: tuple[str, ...] = ()

    @property
    def is_classification(self) -> bool:
        return self.task_type == "classification"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def corruption_known(self) -> bool:
        """Whether ``train.noisy_mask`` says which labels are wrong: a benchmark's clean
        labels and the noise slem added to them, or the synthetic corruption asked of a
        user's file, or true labels the user gave; a user's own labels (as given) carry no
        such truth."""
        return not self.user_data or self.synthetic_corruption is not None or self.y_true_given

    @staticmethod
    def from_arrays(x: Any, y: Any, **options: Any) -> Task:
        """A task from NumPy arrays or torch tensors in one call, e.g.
        ``Task.from_arrays(x, y, x_meta=xm, y_meta=ym)``; the options and errors are those of
        :func:`slem.data.arrays.task_from_arrays`."""
        from slem.data.arrays import task_from_arrays

        return task_from_arrays(x, y, **options)

    def provenance(self) -> dict[str, Any]:
        """Where the splits came from and what labels the metrics use (JSON-ready): keys
        ``splits``, ``test_labels``, ``meta_labels`` and ``synthetic_corruption``."""
        return {
            "splits": dict(self.splits),
            "test_labels": self.test_labels,
            "meta_labels": self.meta_labels,
            "synthetic_corruption": self.synthetic_corruption,
        }

    def __repr__(self) -> str:
        """One line: name, target kind, split sizes and corruption (not the arrays)."""
        f = self.features
        kind = f"{self.n_classes} classes" if self.is_classification else "regression"
        extra = f", noise {self.noise}" if self.noise else ""
        extra += f", imbalance {self.imbalance:g}" if self.imbalance else ""
        return (
            f"Task({self.name!r}, {kind}, train {f.n_train}, meta {f.n_meta}, val {f.n_val}, "
            f"test {f.n_test}{extra})"
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description: sizes, class counts, realized corruption."""
        f = self.features
        out: dict[str, Any] = {
            "dataset": self.name,
            "task_type": self.task_type,
            "source": self.source,
            "seed": self.seed,
            "n_train": f.n_train,
            "n_meta": f.n_meta,
            "n_val": f.n_val,
            "n_test": f.n_test,
            "n_features": f.n_features,
            "input_shape": list(f.input_shape),
            "noise": str(self.noise) if self.noise else None,
            "noise_rate_realized": self.train.noise_rate,
            "noise_rate_realized_val": self.val.noise_rate,
            "imbalance": self.imbalance,
            **self.provenance(),
            "notes": list(self.notes),
        }
        if self.is_classification:
            out.update(
                n_classes=f.n_classes,
                class_names=list(self.class_names),
                class_counts=_counts(self.train.y_true, f.n_classes),
                class_counts_observed=list(f.class_counts),
                class_groups=list(f.class_groups),
                imbalance_ratio_realized=_ratio(_counts(self.train.y_true, f.n_classes)),
            )
        return out


def labels_text(summary: dict[str, Any], split: str = "test") -> str:
    """The labels a run's ``split`` metric was measured against, in words, from a run or task
    summary: ``clean``, ``as given in my.csv, may be noisy`` or ``from test.csv``."""
    kind = summary.get(f"{split}_labels") or "clean"
    source = str((summary.get("splits") or {}).get(split, ""))
    if kind == "as_given":
        return f"as given in {summary.get('dataset')}, may be noisy"
    if kind == "trusted_file":
        return f"from {source.removesuffix(TRUSTED) or 'the trusted file'}"
    return "clean"


def corruption_text(summary: dict[str, Any]) -> str:
    """The synthetic corruption of a run or task summary in a few words, for printed lines."""
    return str(summary.get("synthetic_corruption") or "no synthetic noise")


def _counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return [int(c) for c in np.bincount(labels, minlength=n_classes)]


def _ratio(counts: list[int]) -> float:
    nonzero = [c for c in counts if c > 0]
    return max(nonzero) / min(nonzero) if nonzero else 1.0


def build_task(config: DataConfig | None) -> Task:
    """Load ``config.name`` and make the task it describes.

    Raises:
        SlemError: ``config`` is None (a training config without a ``data`` section), or the
            dataset cannot be loaded or split as it says.
    """
    from slem.data.registry import LoadOptions, load_dataset

    if config is None:
        raise SlemError(
            "data: required when no task is given; add a data section (e.g. data: {name: "
            "mnist1d}) or pass your Task (slem.data.Task.from_arrays) to make_trainer"
        )

    dataset = load_dataset(
        config.name,
        LoadOptions(
            seed=config.seed,
            size=config.size if config.train_size is None else generated_size(config),
            data_seed=config.data_seed,
            data_dir=config.data_dir,
            target=config.target,
            task_type=config.task_type,
            impute=config.impute,
            meta=config.meta,
            test=config.test,
        ),
    )
    return make_task(dataset, config)


def make_task(dataset: Dataset, config: DataConfig | None = None, **overrides: Any) -> Task:
    """Split and corrupt ``dataset`` as ``config`` (or keyword overrides) says; see module doc."""
    base = config.model_dump() if config is not None else {"name": dataset.name}
    cfg = parse_data_config({**base, **overrides})
    dataset = dataset.drop_rare_classes(cfg.min_class_size)
    check_config_fits(dataset, cfg)
    n_classes = dataset.n_classes
    strata = dataset.y if dataset.is_classification else None

    # 1. test split
    if dataset.X_test is not None and dataset.y_test is not None:
        pool = np.arange(len(dataset.y))
        test = Split.clean(dataset.X_test, dataset.y_test, np.arange(len(dataset.y_test)))
    else:
        test_idx, pool = take_fraction(
            len(dataset.y),
            cfg.test_fraction,
            stage_rng(cfg.seed, "test"),
            strata,
            n_classes,
            min_left=2,
        )
        test = Split.clean(dataset.X[test_idx], dataset.y[test_idx], test_idx)

    # 2. meta set: the user's trusted file, or drawn from the pool before any corruption
    meta_idx = np.empty(0, dtype=np.int64)
    if cfg.meta_per_class is not None or cfg.meta_size is not None:
        meta_idx, pool = draw_meta(dataset, pool, cfg)

    # 3. validation split (with train_size: exactly that many training samples)
    if cfg.train_size is not None:
        train_idx, val_idx = split_train_val(dataset, pool, cfg)
    else:
        pool_strata = dataset.y[pool] if strata is not None else None
        val_pos, train_pos = take_fraction(
            len(pool),
            cfg.val_fraction,
            stage_rng(cfg.seed, "val"),
            pool_strata,
            n_classes,
            min_left=1,
        )
        train_idx, val_idx = pool[train_pos], pool[val_pos]

    # 4. imbalance: the same profile on train and on val
    if cfg.imbalance is not None and cfg.imbalance > 1:
        factor, profile = cfg.imbalance, cfg.imbalance_profile
        train_idx = train_idx[
            long_tail(
                dataset.y[train_idx],
                factor,
                n_classes,
                stage_rng(cfg.seed, "imbalance-train"),
                profile,
            ).indices
        ]
        val_idx = val_idx[
            long_tail(
                dataset.y[val_idx], factor, n_classes, stage_rng(cfg.seed, "imbalance-val"), profile
            ).indices
        ]

    # 5. noise
    train, transition, rows = corrupt_split(
        dataset, train_idx, cfg.noise, stage_rng(cfg.seed, "noise-train")
    )
    val, _, _ = corrupt_split(dataset, val_idx, cfg.noise, stage_rng(cfg.seed, "noise-val"))
    meta = (
        Split.clean(dataset.X[meta_idx], dataset.y[meta_idx], meta_idx) if len(meta_idx) else None
    )
    if dataset.X_meta is not None and dataset.y_meta is not None:
        meta = Split.clean(dataset.X_meta, dataset.y_meta, np.arange(len(dataset.y_meta)))

    # 6. normalization (training statistics only)
    normalizer = None
    held = [s for s in (train, val, test, meta) if s is not None]
    if cfg.normalize or any(np.isnan(s.X).any() for s in held):
        normalizer = Normalizer.fit(train.X)
        train, val, test = (apply_normalizer(s, normalizer) for s in (train, val, test))
        meta = apply_normalizer(meta, normalizer) if meta is not None else None

    features = task_features(dataset, train, val, test, meta, cfg.n_groups)
    synthetic = describe_synthetic(cfg)
    return Task(
        name=dataset.name,
        task_type=dataset.task_type,
        class_names=dataset.class_names,
        feature_names=tuple(dataset.feature_names),
        train=train,
        val=val,
        test=test,
        meta=meta,
        features=features,
        noise=cfg.noise,
        imbalance=cfg.imbalance,
        transition=transition,
        transition_rows=rows,
        normalizer=normalizer,
        seed=cfg.seed,
        source=dataset.source,
        notes=dataset.notes
        + (
            (f"{synthetic} (data.synthetic_corruption)",) if synthetic and dataset.user_data else ()
        ),
        **provenance_fields(dataset, meta is not None, synthetic),
        user_data=dataset.user_data,
        synthetic_corruption=synthetic,
        encoder=dataset.encoder,
    )
