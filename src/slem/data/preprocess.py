"""A trained model's preprocessing, saved with it and applied unchanged to new rows.

:class:`Preprocessing` is everything between a user's file and the model's input, and between
the model's output and a label: the table encoding fitted on the training file
(:class:`~slem.data.tabular.TableEncoder`: columns, one-hot levels, label names), the input
standardization fitted on the training split (:class:`~slem.data.task_parts.Normalizer`:
training medians for missing values, means and standard deviations) and, for regression, the
target scaling the model predicts in. It is written as JSON (``preprocessing.json`` in a run
directory): text and numbers only, inspectable, and nothing executes on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slem.data.dataset import TaskType
from slem.data.sources.files import read_table
from slem.data.tabular import TableEncoder
from slem.data.task import Task
from slem.data.task_parts import Normalizer
from slem.errors import SlemError
from slem.rundir import read_json_object

#: the file name in a run directory
PREPROCESSING_FILE = "preprocessing.json"
FORMAT = 1


@dataclass(frozen=True)
class Preprocessing:
    """How raw rows become model inputs and model outputs become predictions.

    Attributes:
        task_type: ``classification`` or ``regression``.
        class_names: the label of each output column (classification), in the original
            label text: a model's class ``k`` is ``class_names[k]``.
        input_shape: one sample's input shape, without the batch.
        encoder: the training table's encoding (None: the data were arrays, e.g. a built-in
            dataset; new inputs are then arrays of ``input_shape``).
        normalizer: the training split's standardization (None: inputs were used as given).
        target_center, target_scale: regression only: the model predicts
            ``(y - target_center) / target_scale``.
    """

    task_type: TaskType
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    encoder: TableEncoder | None = None
    normalizer: Normalizer | None = None
    target_center: float = 0.0
    target_scale: float = 1.0

    @staticmethod
    def of(task: Task) -> Preprocessing:
        """The preprocessing that made ``task``'s inputs (without a target scaling: see
        :meth:`with_target_scaling`)."""
        return Preprocessing(
            task_type=task.task_type,
            class_names=tuple(task.class_names),
            input_shape=tuple(task.features.input_shape),
            encoder=task.encoder,
            normalizer=task.normalizer,
        )

    def with_target_scaling(self, center: float, scale: float) -> Preprocessing:
        """The same, for a regression model predicting ``(y - center) / scale``."""
        return replace(self, target_center=float(center), target_scale=float(scale))

    # ----- inputs -----------------------------------------------------------------------

    def read(self, path: str | Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """New rows from a file: ``(X, y, notes)`` with ``X`` float32 ``(n, *input_shape)``
        ready for the model, ``y`` the file's encoded targets when it has the target column
        (``-1`` / ``NaN`` where missing; else None), ``notes`` what was done to the rows.

        A run trained on a table takes a table with the same feature columns (CSV, TSV,
        Parquet, ``.npz``, ``.npy``; the target column may be absent; missing feature values
        are filled with the training split's medians, as in training); a run trained on arrays
        takes a ``.npy`` array, or a ``.npz`` with ``X``, of ``(n, *input_shape)`` inputs.

        Raises:
            SlemError: the file is missing or unreadable, a column is missing, unexpected or
                of the wrong type, or the inputs have the wrong shape.
        """
        path = Path(path)
        if self.encoder is not None:
            frame = read_table(path, "--data", self.encoder.target)
            if len(frame) == 0:
                raise SlemError(f"data file '{path}' has no rows; give rows to predict")
            return self.table_inputs(frame, path.name)
        if path.suffix.lower() not in (".npy", ".npz"):
            raise SlemError(
                f"data file '{path}': this model was trained on arrays of shape "
                f"{self.input_shape}; give a .npy array (or a .npz with X) of new inputs"
            )
        return self.array_inputs(_read_array(path), path.name), None, []

    def table_inputs(
        self, frame: pd.DataFrame, name: str
    ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """:meth:`read` for a table already in memory."""
        if self.encoder is None:
            raise SlemError(
                f"{name}: this model was trained on arrays, not a table; give inputs of shape "
                f"{self.input_shape}"
            )
        fill = self.normalizer is not None and self.normalizer.fill is not None
        X, y, notes = self.encoder.transform_inputs(frame, name, impute=fill)
        return self.normalized(X), y, notes

    def array_inputs(self, X: Any, name: str) -> np.ndarray:
        """Raw inputs ``(n, *input_shape)`` (or ``(n, prod(input_shape))``), standardized.

        Raises:
            SlemError: the shape does not fit, or values are not finite numbers.
        """
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError):
            raise SlemError(f"{name}: inputs must be numbers") from None
        size = int(np.prod(self.input_shape))
        if X.ndim < 2 or int(np.prod(X.shape[1:])) != size:
            raise SlemError(
                f"{name}: inputs of shape {X.shape[1:]} per row; this model takes "
                f"{self.input_shape}"
            )
        X = X.reshape(len(X), *self.input_shape)
        if np.isinf(X).any() or (np.isnan(X).any() and self.normalizer is None):
            raise SlemError(f"{name}: inputs hold infinite or missing values")
        return self.normalized(X)

    def normalized(self, X: np.ndarray) -> np.ndarray:
        """``X`` standardized as the training split was (unchanged without a normalizer)."""
        return self.normalizer(X) if self.normalizer is not None else X.astype(np.float32)

    # ----- outputs ----------------------------------------------------------------------

    def labels(self, classes: np.ndarray) -> np.ndarray:
        """Class indices ``(n,)`` as their label text (object array)."""
        names = np.asarray(self.class_names, dtype=object)
        return names[np.asarray(classes, dtype=np.int64)]

    def targets(self, z: np.ndarray) -> np.ndarray:
        """A regression model's outputs in original target units."""
        return np.asarray(z, dtype=np.float64) * self.target_scale + self.target_center

    # ----- files ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (text, numbers and lists)."""
        norm = self.normalizer
        return {
            "format": FORMAT,
            "task_type": self.task_type,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "table": self.encoder.to_json() if self.encoder is not None else None,
            "normalizer": None
            if norm is None
            else {
                "mean": norm.mean.tolist(),
                "std": norm.std.tolist(),
                "fill": norm.fill.tolist() if norm.fill is not None else None,
            },
            "target": {"center": self.target_center, "scale": self.target_scale},
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Preprocessing:
        """The preprocessing :meth:`to_json` described.

        Raises:
            SlemError: a field is missing or damaged, or the format is newer than this slem.
        """
        try:
            if int(doc.get("format", 0)) > FORMAT:
                raise SlemError(
                    f"the preprocessing is format {doc['format']}, newer than this slem "
                    f"(format {FORMAT}); upgrade slem"
                )
            norm = doc["normalizer"]
            normalizer = None
            if norm is not None:
                fill = norm.get("fill")
                normalizer = Normalizer(
                    np.asarray(norm["mean"], dtype=np.float32),
                    np.asarray(norm["std"], dtype=np.float32),
                    np.asarray(fill, dtype=np.float32) if fill is not None else None,
                )
            table = doc["table"]
            target = doc.get("target") or {}
            return Preprocessing(
                task_type=doc["task_type"],
                class_names=tuple(str(c) for c in doc["class_names"]),
                input_shape=tuple(int(s) for s in doc["input_shape"]),
                encoder=TableEncoder.from_json(table) if table is not None else None,
                normalizer=normalizer,
                target_center=float(target.get("center", 0.0)),
                target_scale=float(target.get("scale", 1.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SlemError(f"the saved preprocessing is damaged ({exc!r})") from None

    def to_text(self) -> str:
        """:meth:`to_json` as JSON text, for a ``preprocessing.json`` (written atomically by
        the caller)."""
        return json.dumps(self.to_json(), indent=1)

    @staticmethod
    def load(path: str | Path) -> Preprocessing:
        """Read a ``preprocessing.json``.

        Raises:
            SlemError: the file is missing, not JSON, or damaged.
        """
        path = Path(path)
        if not path.is_file():
            raise SlemError(f"{path} does not exist; the run predates saved preprocessing")
        doc = read_json_object(path)
        try:
            return Preprocessing.from_json(doc)
        except SlemError as exc:
            raise SlemError(f"{path}: {exc}") from None


def _read_array(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("X", "x") if k in archive.files), None)
            if key is None:
                raise SlemError(f"data file '{path}': no array X in it; arrays: {archive.files}")
            return archive[key]
    except SlemError:
        raise
    except (OSError, ValueError) as exc:
        raise SlemError(f"data file '{path}' could not be read: {exc}") from None


__all__ = ["PREPROCESSING_FILE", "Preprocessing"]
