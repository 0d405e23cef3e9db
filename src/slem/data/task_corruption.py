"""What :func:`~slem.data.task.make_task` does to the drawn splits and records about them: the
checks that a dataset allows the configured corruption and meta set, label or target noise on
a split, normalization, and the provenance of each split (``splits``, ``test_labels`` and
``meta_labels`` of :class:`~slem.data.task.Task`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from slem.data.config import DataConfig, NoiseSpec
from slem.data.corruption import (
    LabelNoise,
    TargetNoise,
    instance_noise,
    pairflip_noise,
    regression_noise,
    symmetric_noise,
    uniform_noise,
)
from slem.data.dataset import Dataset
from slem.data.task_parts import Normalizer, Split
from slem.errors import SlemError

#: what a split's labels are: clean (a benchmark's, never corrupted by slem), as given in the
#: user's file (possibly noisy), or from a trusted file the user gave (data.meta / data.test)
LabelKind = Literal["clean", "as_given", "trusted_file"]
TRUSTED = " (trusted file)"


def describe_synthetic(cfg: DataConfig) -> str | None:
    """The corruption make_task adds, in words; None when it adds none."""
    parts = []
    if cfg.noise is not None and cfg.noise.rate > 0:
        parts.append(f"noise {cfg.noise}")
    if cfg.imbalance is not None and cfg.imbalance > 1:
        parts.append(f"imbalance {cfg.imbalance:g} ({cfg.imbalance_profile})")
    return f"synthetic {' and '.join(parts)} added to train and val" if parts else None


def provenance_fields(dataset: Dataset, has_meta: bool, synthetic: str | None) -> dict[str, Any]:
    """``splits``, ``test_labels`` and ``meta_labels`` of :class:`~slem.data.task.Task`."""
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


def check_config_fits(dataset: Dataset, cfg: DataConfig) -> None:
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


def corrupt_split(
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


def apply_normalizer(split: Split, normalizer: Normalizer) -> Split:
    return Split(normalizer(split.X), split.y, split.y_true, split.noisy_mask, split.index)
