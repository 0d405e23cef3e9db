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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from slem.data.config import DataConfig, NoiseSpec, parse_data_config
from slem.data.corruption import (
    LabelNoise,
    TargetNoise,
    instance_noise,
    long_tail,
    pairflip_noise,
    regression_noise,
    symmetric_noise,
    uniform_noise,
)
from slem.data.dataset import Dataset, TaskType
from slem.data.splits import stage_rng, take_counts, take_fraction
from slem.errors import SlemError

#: what a split's labels are: clean (a benchmark's, never corrupted by slem), as given in the
#: user's file (possibly noisy), or from a trusted file the user gave (data.meta / data.test)
LabelKind = Literal["clean", "as_given", "trusted_file"]
TRUSTED = " (trusted file)"


@dataclass(frozen=True)
class Split:
    """Inputs with observed targets ``y`` and, for analysis only, the clean ``y_true``.

    ``index`` gives each row's position in its source (the training pool, or the official test
    split for ``Task.test`` when the source has one).
    """

    X: np.ndarray
    y: np.ndarray
    y_true: np.ndarray
    noisy_mask: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @property
    def noise_rate(self) -> float:
        return float(self.noisy_mask.mean()) if len(self) else 0.0

    def tensors(self, device: Any = None) -> tuple[Any, Any]:
        """``(X, y)`` as torch tensors (float32 inputs; int64 labels or float32 targets)."""
        import torch

        X = torch.as_tensor(self.X, dtype=torch.float32, device=device)
        dtype = torch.int64 if self.y.dtype.kind in "iu" else torch.float32
        return X, torch.as_tensor(self.y, dtype=dtype, device=device)

    @staticmethod
    def clean(X: np.ndarray, y: np.ndarray, index: np.ndarray) -> Split:
        return Split(X, y, y.copy(), np.zeros(len(y), dtype=bool), index)


@dataclass(frozen=True)
class Normalizer:
    """Input standardization fitted on a training split: median imputation, then
    ``(x - mean) / std`` per feature (tables) or per channel (images and signals)."""

    mean: np.ndarray
    std: np.ndarray
    fill: np.ndarray | None = None

    @staticmethod
    def fit(X: np.ndarray) -> Normalizer:
        """Fit on training inputs ``X``; tables (2-D) always get a median ``fill``, so missing
        values of a later split (a user's test file) are filled with training medians too."""
        axes = (0,) if X.ndim == 2 else (0, *range(2, X.ndim))
        fill = None
        if X.ndim == 2:
            fill = np.nanmedian(X, axis=0)
            fill = np.where(np.isnan(fill), 0.0, fill).astype(np.float32)
            X = np.where(np.isnan(X), fill, X)
        mean = X.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = X.std(axis=axes, keepdims=True, dtype=np.float64)[0]
        std = np.where(std < 1e-8, 1.0, std)
        return Normalizer(mean.astype(np.float32), std.astype(np.float32), fill)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.fill is not None:
            X = np.where(np.isnan(X), self.fill, X)
        return ((X - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class TaskFeatures:
    """What a methodology may observe of a task without touching clean labels.

    ``class_counts`` are counts of the *observed* training labels. ``class_groups[c]`` is the
    size group of class c (0 = most frequent), from an exact 1-D k-means on log counts, as
    CMW-Net conditions its weighting on.
    """

    n_train: int
    n_meta: int
    n_val: int
    n_test: int
    n_features: int
    n_classes: int
    input_shape: tuple[int, ...]
    class_counts: tuple[int, ...]
    class_groups: tuple[int, ...]
    n_groups: int

    @property
    def imbalance_ratio(self) -> float:
        counts = [c for c in self.class_counts if c > 0]
        return max(counts) / min(counts) if counts else 1.0


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

    @property
    def is_classification(self) -> bool:
        return self.task_type == "classification"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

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
            size=config.size if config.train_size is None else _generated_size(config),
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


def _generated_size(config: DataConfig) -> int | None:
    """For a generated dataset (MNIST-1D) with ``train_size``: enough samples that the pool
    (80% of them) holds the training, validation and meta sets, or the default if larger."""
    from slem.data.registry import BUILTIN, canonical_name

    spec = BUILTIN.get(canonical_name(config.name))
    if spec is None or not spec.generates_size or config.train_size is None:
        return None
    from slem.data.sources import mnist1d

    train = config.train_size
    needed = train + _val_count(train, config.val_fraction) + 10 * (config.meta_per_class or 0)
    return max(mnist1d.DEFAULT_SIZE, int(np.ceil(needed / 0.8 * 1.05)) + 100)


def _val_count(train_size: int, val_fraction: float) -> int:
    """Validation samples beside ``train_size`` training ones: ``val_fraction`` of both."""
    return max(1, round(train_size * val_fraction / (1.0 - val_fraction)))


def _max_train_size(pool: int, val_fraction: float) -> int:
    """The largest ``T`` with ``T + _val_count(T) <= pool``."""
    t = int(pool * (1.0 - val_fraction)) + 1
    while t > 0 and t + _val_count(t, val_fraction) > pool:
        t -= 1
    return t


def _stratified_exact(
    labels: np.ndarray, total: int, n_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (taken, rest) with exactly ``total`` taken, spread over the classes in
    proportion to their counts (largest remainder, ties broken at random)."""
    counts = np.bincount(labels, minlength=n_classes)
    quota = total * counts / max(len(labels), 1)
    alloc = np.floor(quota).astype(np.int64)
    short = total - int(alloc.sum())
    if short > 0:
        order = np.lexsort((rng.random(n_classes), -(quota - alloc)))
        alloc[order[:short]] += 1
    return take_counts(labels, np.minimum(alloc, counts), rng)


def _split_train_val(
    dataset: Dataset, pool: np.ndarray, cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``cfg.train_size`` training and ``_val_count`` validation indices from
    ``pool``, stratified by class (classification)."""
    train_size = int(cfg.train_size or 0)
    n_val = _val_count(train_size, cfg.val_fraction)
    if train_size + n_val > len(pool):
        raise SlemError(
            f"data.train_size {train_size} is more than '{dataset.name}' can give: after the "
            f"test and meta sets {len(pool)} samples are left, which hold at most "
            f"{_max_train_size(len(pool), cfg.val_fraction)} training samples beside the "
            f"validation split (val_fraction {cfg.val_fraction:g})"
        )
    if dataset.is_classification:
        labels = dataset.y[pool]
        used, _ = _stratified_exact(
            labels, train_size + n_val, dataset.n_classes, stage_rng(cfg.seed, "train-size")
        )
        val_pos, train_pos = _stratified_exact(
            labels[used], n_val, dataset.n_classes, stage_rng(cfg.seed, "val")
        )
        return pool[used][train_pos], pool[used][val_pos]
    perm = stage_rng(cfg.seed, "val").permutation(pool)
    return np.sort(perm[n_val : n_val + train_size]), np.sort(perm[:n_val])


def make_task(dataset: Dataset, config: DataConfig | None = None, **overrides: Any) -> Task:
    """Split and corrupt ``dataset`` as ``config`` (or keyword overrides) says; see module doc."""
    base = config.model_dump() if config is not None else {"name": dataset.name}
    cfg = parse_data_config({**base, **overrides})
    dataset = dataset.drop_rare_classes(cfg.min_class_size)
    _check_config_fits(dataset, cfg)
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
        meta_idx, pool = _draw_meta(dataset, pool, cfg)

    # 3. validation split (with train_size: exactly that many training samples)
    if cfg.train_size is not None:
        train_idx, val_idx = _split_train_val(dataset, pool, cfg)
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
    train, transition, rows = _corrupt(
        dataset, train_idx, cfg.noise, stage_rng(cfg.seed, "noise-train")
    )
    val, _, _ = _corrupt(dataset, val_idx, cfg.noise, stage_rng(cfg.seed, "noise-val"))
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
        train, val, test = (_apply(s, normalizer) for s in (train, val, test))
        meta = _apply(meta, normalizer) if meta is not None else None

    features = _task_features(dataset, train, val, test, meta, cfg.n_groups)
    synthetic = _synthetic(cfg)
    return Task(
        name=dataset.name,
        task_type=dataset.task_type,
        class_names=dataset.class_names,
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
        **_provenance(dataset, meta is not None, synthetic),
        user_data=dataset.user_data,
        synthetic_corruption=synthetic,
    )


def _synthetic(cfg: DataConfig) -> str | None:
    """The corruption make_task adds, in words; None when it adds none."""
    parts = []
    if cfg.noise is not None and cfg.noise.rate > 0:
        parts.append(f"noise {cfg.noise}")
    if cfg.imbalance is not None and cfg.imbalance > 1:
        parts.append(f"imbalance {cfg.imbalance:g} ({cfg.imbalance_profile})")
    return f"synthetic {' and '.join(parts)} added to train and val" if parts else None


def _provenance(dataset: Dataset, has_meta: bool, synthetic: str | None) -> dict[str, Any]:
    """``splits``, ``test_labels`` and ``meta_labels`` of :class:`Task`."""
    name = dataset.name
    added = f"; {synthetic}" if synthetic else ""
    if dataset.user_data:
        given = "labels as given, may be noisy"
        splits = {"train": f"{name} ({given}{added})", "val": f"drawn from {name} ({given}{added})"}
        test_kind: LabelKind = "as_given"
        splits["test"] = f"drawn from {name} ({given})"
        if dataset.test_file is not None:
            test_kind, splits["test"] = "trusted_file", f"{dataset.test_file}{TRUSTED}"
        meta_kind: LabelKind | None = None
        if dataset.meta_file is not None:
            meta_kind, splits["meta"] = "trusted_file", f"{dataset.meta_file}{TRUSTED}"
        elif has_meta:
            meta_kind, splits["meta"] = "as_given", f"drawn from {name} ({given})"
    else:
        labels = synthetic or "clean labels"
        splits = {
            "train": f"{name} ({labels})",
            "val": f"drawn from {name} ({labels})",
            "test": (
                f"official test split of {name} (clean labels)"
                if dataset.has_official_test
                else f"drawn from {name} (clean labels)"
            ),
        }
        test_kind, meta_kind = "clean", None
        if has_meta:
            meta_kind, splits["meta"] = "clean", f"drawn from {name} (clean labels)"
    return {"splits": splits, "test_labels": test_kind, "meta_labels": meta_kind}


def _check_config_fits(dataset: Dataset, cfg: DataConfig) -> None:
    _check_user_data(dataset, cfg)
    if dataset.is_classification:
        if cfg.noise is not None and not cfg.noise.is_label_noise:
            raise SlemError(
                f"noise '{cfg.noise.kind}' is for regression targets; '{dataset.name}' is "
                "classification: use symmetric, uniform, pairflip or instance"
            )
        if cfg.meta_size is not None:
            raise SlemError(
                f"meta_size is for regression; '{dataset.name}' is classification: use "
                "meta_per_class"
            )
        counts = np.bincount(dataset.y, minlength=dataset.n_classes)
        if counts.min() < 2:
            rare = dataset.class_names[int(np.argmin(counts))]
            raise SlemError(
                f"{dataset.name}: class '{rare}' has {counts.min()} sample(s), too few to split; "
                "drop rare classes with min_class_size (--min-class-size), e.g. 5"
            )
        return
    if cfg.noise is not None and cfg.noise.is_label_noise:
        raise SlemError(
            f"noise '{cfg.noise.kind}' is for class labels; '{dataset.name}' is regression: use "
            "gaussian, laplace, student_t, outlier or mixture"
        )
    for name in ("meta_per_class", "imbalance"):
        if getattr(cfg, name) is not None:
            raise SlemError(f"{name} needs class labels; '{dataset.name}' is regression")


def _check_user_data(dataset: Dataset, cfg: DataConfig) -> None:
    """A user's file is never corrupted unless asked, and has one meta set at most; all
    problems are named in one line."""
    problems = []
    if dataset.user_data and not cfg.synthetic_corruption:
        what = "labels" if dataset.is_classification else "targets"
        if cfg.noise is not None and cfg.noise.rate > 0:
            problems.append(
                f"data.noise {cfg.noise} would add synthetic noise to the {what} of your own "
                f"file '{dataset.name}' (remove data.noise: its {what} are used as given)"
            )
        if cfg.imbalance is not None and cfg.imbalance > 1:
            problems.append(
                f"data.imbalance {cfg.imbalance:g} would subsample your own file "
                f"'{dataset.name}' to a synthetic long tail (remove data.imbalance)"
            )
        if problems:
            problems[-1] += (
                ", or set data.synthetic_corruption=true (slem data show: "
                "--synthetic-corruption) to corrupt it on purpose"
            )
    if dataset.X_meta is not None:
        problems += [
            f"data.meta ({dataset.meta_file}) is the meta set: remove data.{drawn}, which would "
            "draw another one from the training file"
            for drawn in ("meta_per_class", "meta_size")
            if getattr(cfg, drawn) is not None
        ]
    if problems:
        raise SlemError("; ".join(problems))


def _draw_meta(
    dataset: Dataset, pool: np.ndarray, cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray]:
    rng = stage_rng(cfg.seed, "meta")
    if not dataset.is_classification:
        size = int(cfg.meta_size or 0)
        if size >= len(pool):
            raise SlemError(f"meta_size {size} leaves no training data (pool has {len(pool)})")
        perm = rng.permutation(pool)
        return np.sort(perm[:size]), np.sort(perm[size:])
    k = int(cfg.meta_per_class or 0)
    counts = np.bincount(dataset.y[pool], minlength=dataset.n_classes)
    smallest = int(np.argmin(counts))
    if k >= counts[smallest]:
        raise SlemError(
            f"meta_per_class {k} is more than class '{dataset.class_names[smallest]}' can give "
            f"({counts[smallest]} samples in the training pool); use at most "
            f"{max(counts[smallest] - 1, 0)}"
        )
    taken, rest = take_counts(dataset.y[pool], np.full(dataset.n_classes, k), rng)
    return pool[taken], pool[rest]


def _corrupt(
    dataset: Dataset, idx: np.ndarray, spec: NoiseSpec | None, rng: np.random.Generator
) -> tuple[Split, np.ndarray | None, np.ndarray | None]:
    """The corrupted split, the transition matrix and (instance noise) per-sample rows."""
    X, y = dataset.X[idx], dataset.y[idx]
    if spec is None or spec.rate == 0:
        transition = np.eye(dataset.n_classes) if dataset.is_classification else None
        return Split.clean(X, y, idx), transition, None
    result: LabelNoise | TargetNoise
    if spec.kind == "symmetric":
        result = symmetric_noise(y, spec.rate, dataset.n_classes, rng)
    elif spec.kind == "uniform":
        result = uniform_noise(y, spec.rate, dataset.n_classes, rng)
    elif spec.kind == "pairflip":
        result = pairflip_noise(y, spec.rate, dataset.n_classes, rng, spec.mapping)
    elif spec.kind == "instance":
        result = instance_noise(y, X, spec.rate, dataset.n_classes, rng, spec.rate_std)
    else:
        result = regression_noise(
            y, spec.rate, rng, spec.kind, spec.weights, spec.scale, spec.outlier_scale
        )
    if isinstance(result, LabelNoise):
        split = Split(X, result.labels, y, result.noisy_mask, idx)
        return split, result.transition, result.sample_rows
    return Split(X, result.targets, y, result.noisy_mask, idx), None, None


def _apply(split: Split, normalizer: Normalizer) -> Split:
    return Split(normalizer(split.X), split.y, split.y_true, split.noisy_mask, split.index)


def _task_features(
    dataset: Dataset, train: Split, val: Split, test: Split, meta: Split | None, n_groups: int
) -> TaskFeatures:
    counts = (
        np.bincount(train.y, minlength=dataset.n_classes)
        if dataset.is_classification
        else np.zeros(0, dtype=np.int64)
    )
    groups = group_by_size(counts, n_groups) if len(counts) else np.zeros(0, dtype=np.int64)
    return TaskFeatures(
        n_train=len(train),
        n_meta=len(meta) if meta is not None else 0,
        n_val=len(val),
        n_test=len(test),
        n_features=dataset.n_features,
        n_classes=dataset.n_classes,
        input_shape=dataset.input_shape,
        class_counts=tuple(int(c) for c in counts),
        class_groups=tuple(int(g) for g in groups),
        n_groups=int(groups.max()) + 1 if len(groups) else 0,
    )


def group_by_size(counts: np.ndarray, n_groups: int, min_ratio: float = 1.5) -> np.ndarray:
    """Group classes by size: optimal 1-D k-means on ``log(1 + count)``, group 0 = largest.

    Exact (dynamic programming over sorted values), so equal sizes always share a group.
    Neighbouring groups whose typical sizes differ by less than ``min_ratio`` are merged, so a
    balanced task whose observed counts differ only through label noise has a single group.
    """
    values = np.log1p(np.asarray(counts, dtype=np.float64))
    order = np.argsort(-values, kind="stable")
    v = values[order]
    distinct = len(np.unique(v))
    k = max(1, min(n_groups, distinct))
    n = len(v)
    prefix = np.concatenate([[0.0], np.cumsum(v)])
    prefix_sq = np.concatenate([[0.0], np.cumsum(v * v)])

    def cost(i: int, j: int) -> float:  # within-group sum of squares of v[i:j]
        s, s2, m = prefix[j] - prefix[i], prefix_sq[j] - prefix_sq[i], j - i
        return float(s2 - s * s / m)

    best = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            for i in range(g - 1, j):
                c = best[g - 1, i] + cost(i, j)
                if c < best[g, j] - 1e-12:
                    best[g, j], cut[g, j] = c, i
    labels_sorted = np.zeros(n, dtype=np.int64)
    j = n
    for g in range(k, 0, -1):
        i = int(cut[g, j])
        labels_sorted[i:j] = g - 1
        j = i
    # equal values must share a group: give ties the group of their first occurrence
    for t in range(1, n):
        if v[t] == v[t - 1]:
            labels_sorted[t] = labels_sorted[t - 1]
    centers = [float(v[labels_sorted == g].mean()) for g in range(int(labels_sorted.max()) + 1)]
    merged = np.zeros(len(centers), dtype=np.int64)
    for g in range(1, len(centers)):  # centers decrease with g; merge near-equal neighbours
        same = centers[g - 1] - centers[g] < np.log(min_ratio)
        merged[g] = merged[g - 1] + (0 if same else 1)
    labels_sorted = merged[labels_sorted]
    groups = np.empty(n, dtype=np.int64)
    groups[order] = labels_sorted
    return groups
