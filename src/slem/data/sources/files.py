"""The user's own data: CSV, Parquet, ``.npy`` and ``.npz`` files with a named target.

* CSV / Parquet: a table; ``target`` names a column.
* ``.npz``: either arrays ``X`` (or ``x``) plus a label array named by ``target`` (default
  ``y``), or one 1-D array per column, of which ``target`` is one.
* ``.npy``: a structured array whose field ``target`` is the label, or a plain 2-D array whose
  ``target`` is a column index (e.g. ``-1`` for the last column).

A file is the user's own data: its labels are taken as given (they may be noisy), never
corrupted unless asked for. A trusted meta set (``meta``) and a test set (``test``) can come
from separate files with the same columns; they are encoded like the training file (its label
mapping and one-hot levels) and standardized later with the training split's statistics.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from slem.data.dataset import Dataset, TaskType
from slem.data.tabular import fit_table
from slem.errors import SlemError

SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".npy", ".npz")


def looks_like_file(name: str) -> bool:
    return name.lower().endswith(SUFFIXES) or "/" in name or name.startswith(".")


def load_file(
    path: str | Path,
    target: str | None,
    *,
    task_type: TaskType | Literal["auto"] = "auto",
    impute: bool = False,
    meta: str | Path | None = None,
    test: str | Path | None = None,
) -> Dataset:
    """Read ``path`` and convert it with the shared table rules (:mod:`slem.data.tabular`).

    ``meta`` / ``test``: files with the same columns holding a trusted meta set and a test set
    (``Dataset.X_meta`` / ``X_test``), encoded as the training file is.

    Raises:
        SlemError: a file is missing or unreadable, a column or label does not match.
    """
    path = Path(path)
    frame = _read_frame(path, _checked_suffix(path, "data"), target)
    if target is None:
        target = "y" if "y" in frame.columns else None
    if target is None:
        raise SlemError(
            f"data file '{path}' needs a target column (--target); columns: "
            + ", ".join(map(str, list(frame.columns)[:30]))
        )
    dataset, encoder = fit_table(
        frame,
        target,
        name=path.name,
        source=f"user file {path}",
        license="the user's own data",
        task_type=task_type,
        impute=impute,
    )
    notes = list(dataset.notes)
    held: dict[str, tuple[np.ndarray, np.ndarray, str] | None] = {"meta": None, "test": None}
    for role, other in (("meta", meta), ("test", test)):
        if other is None:
            continue
        other_path, field = Path(other), f"data.{role}"
        other_frame = _read_frame(other_path, _checked_suffix(other_path, field), target)
        X, y, other_notes = encoder.transform(other_frame, f"{field} {other_path.name}")
        if len(y) == 0:
            raise SlemError(f"{field} file '{other_path}' has no rows")
        held[role] = (X, y, str(other))
        notes.extend(f"{field} {other_path.name}: {n}" for n in other_notes)
    meta_part, test_part = held["meta"], held["test"]
    return replace(
        dataset,
        notes=tuple(notes),
        user_data=True,
        X_meta=meta_part[0] if meta_part else None,
        y_meta=meta_part[1] if meta_part else None,
        meta_file=meta_part[2] if meta_part else None,
        X_test=test_part[0] if test_part else None,
        y_test=test_part[1] if test_part else None,
        test_file=test_part[2] if test_part else None,
    )


def read_table(path: str | Path, role: str, target: str | None) -> pd.DataFrame:
    """The table in ``path`` (any of :data:`SUFFIXES`), for the config field or option
    ``role`` named in errors.

    Raises:
        SlemError: the file is missing, a directory, of an unsupported kind, or unreadable.
    """
    path = Path(path)
    return _read_frame(path, _checked_suffix(path, role), target)


def _checked_suffix(path: Path, role: str) -> str:
    if path.is_dir():
        target = ", with --target COLUMN" if role == "data" else ""
        raise SlemError(
            f"{role} file '{path}' is a directory; give the data file in it (e.g. "
            f"{path}/data.csv){target}"
        )
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked for {path.resolve()})"
        raise SlemError(f"{role} file '{path}' does not exist{where}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SlemError(
            f"{role} file '{path}': unsupported suffix '{suffix}'; use one of {', '.join(SUFFIXES)}"
        )
    return suffix


def _read_frame(path: Path, suffix: str, target: str | None) -> pd.DataFrame:
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix in (".parquet", ".pq"):
            if importlib.util.find_spec("pyarrow") is None:
                raise SlemError("reading Parquet needs pyarrow: pip install 'slem[parquet]'")
            return pd.read_parquet(path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return _npz_frame(dict(archive.items()), path, target)
        return _npy_frame(np.load(path, allow_pickle=False), path, target)
    except SlemError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SlemError(f"data file '{path}' could not be read: {first_line}") from exc


def _npz_frame(arrays: dict[str, np.ndarray], path: Path, target: str | None) -> pd.DataFrame:
    label = target or "y"
    features = next((k for k in ("X", "x") if k in arrays), None)
    if features is not None:
        if label not in arrays:
            raise SlemError(
                f"data file '{path}': target array '{label}' not found; arrays: "
                + ", ".join(arrays)
            )
        X = arrays[features].reshape(len(arrays[features]), -1)
        frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
        frame[label] = arrays[label]
        return frame
    bad = [k for k, v in arrays.items() if v.ndim != 1]
    if bad:
        raise SlemError(
            f"data file '{path}': expected arrays 'X' and '{label}', or one 1-D array per "
            f"column; got multi-dimensional {', '.join(bad)}"
        )
    return pd.DataFrame(arrays)


def _npy_frame(array: np.ndarray, path: Path, target: str | None) -> pd.DataFrame:
    if array.dtype.names:
        return pd.DataFrame({name: array[name] for name in array.dtype.names})
    if array.ndim != 2:
        raise SlemError(
            f"data file '{path}': a plain .npy must be 2-D (rows x columns), got shape "
            f"{array.shape}"
        )
    frame = pd.DataFrame(array, columns=[str(j) for j in range(array.shape[1])])
    if target is not None and target.lstrip("-").isdigit():
        index = int(target)
        if not -array.shape[1] <= index < array.shape[1]:
            raise SlemError(
                f"data file '{path}': target column index {index} is out of range for "
                f"{array.shape[1]} columns"
            )
        frame = frame.rename(columns={str(index % array.shape[1]): target})
    return frame
