"""Use a finished run: load its model and preprocessing, predict new rows.

:func:`load_trained` rebuilds a run directory's model from its ``config.yaml`` (the same
:func:`~slem.train.models.build_model` call that trained it, a custom ``model.arch`` included),
loads the weights ``summary.json`` names (the epoch validation chose, unless told otherwise:
:func:`slem.train.run.save_weights`) and the saved :class:`~slem.data.preprocess.Preprocessing`.
The returned :class:`TrainedModel` predicts labels in the training file's own label text
(strings stay strings), class probabilities, or regression targets in original units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from slem.data.preprocess import PREPROCESSING_FILE, Preprocessing
from slem.errors import SlemError
from slem.rundir import read_json_object
from slem.train.models import build_model, with_import_root

Weights = Literal["chosen", "best", "final"]
WEIGHT_CHOICES: tuple[str, ...] = ("chosen", "best", "final")
#: rows per forward pass
BATCH = 1024
#: an HPO directory keeps the model it refitted here
REFIT_DIR = "refit"


class Predictor(Protocol):
    """What a :class:`TrainedModel` asks of the fitted model, on preprocessed inputs ``X``
    ``(n, *input_shape)``: a network (:class:`Network`) or a scikit-learn pipeline (the CASH
    refit of ``slem hpo``, :func:`slem.automl.outputs.load_model`)."""

    def classes(self, X: np.ndarray) -> np.ndarray:
        """Predicted class indices ``(n,)`` (int64)."""
        ...

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, C)``, column ``k`` for class ``k``."""
        ...

    def values(self, X: np.ndarray) -> np.ndarray:
        """Regression predictions ``(n,)`` in original target units."""
        ...


@dataclass
class Network:
    """A trained ``nn.Module`` as a :class:`Predictor`: softmax of its logits, or its
    standardized regression output mapped back by ``preprocessing``; eval mode, batched."""

    model: nn.Module
    preprocessing: Preprocessing
    device: torch.device

    def outputs(self, X: np.ndarray) -> np.ndarray:
        """The raw outputs: logits ``(n, C)``, or ``(n,)`` standardized predictions."""
        self.model.eval()
        out: list[np.ndarray] = []
        dtype = torch.get_default_dtype()
        with torch.no_grad():
            for i in range(0, len(X), BATCH):
                xb = torch.as_tensor(X[i : i + BATCH], dtype=dtype, device=self.device)
                out.append(self.model(xb).detach().cpu().double().numpy())
        classification = self.preprocessing.task_type == "classification"
        if not out:
            return np.zeros((0, len(self.preprocessing.class_names)) if classification else 0)
        z = np.concatenate(out)
        return z if classification else z.reshape(len(z))

    def classes(self, X: np.ndarray) -> np.ndarray:
        return self.outputs(X).argmax(axis=1)

    def proba(self, X: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.as_tensor(self.outputs(X)), dim=1).numpy()

    def values(self, X: np.ndarray) -> np.ndarray:
        return self.preprocessing.targets(self.outputs(X))


@dataclass
class TrainedModel:
    """A run's trained model and the preprocessing of its inputs.

    Attributes:
        predictor: the fitted model (a :class:`Network`, or a scikit-learn pipeline's).
        preprocessing: how rows become inputs and outputs become predictions.
        weights: which weights are loaded: ``best`` (the epoch validation chose), ``final``,
            or ``pipeline`` (a refitted scikit-learn pipeline).
        epoch: the epoch (1-based) those weights are from (-1: not an epoch).
        run_dir: the run directory.
    """

    predictor: Predictor
    preprocessing: Preprocessing
    weights: str
    epoch: int
    run_dir: Path

    @property
    def model(self) -> Any:
        """The network (``nn.Module``) or the pipeline."""
        return getattr(self.predictor, "model", self.predictor)

    @property
    def is_classification(self) -> bool:
        return self.preprocessing.task_type == "classification"

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, C)`` for preprocessed ``X`` (column ``k``: the class
        ``preprocessing.class_names[k]``).

        Raises:
            SlemError: the run is a regression.
        """
        if not self.is_classification:
            raise SlemError(f"{self.run_dir} is a regression run; it has no class probabilities")
        return self.predictor.proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Labels (the training file's label text, an object array ``(n,)``) or regression
        targets in original units (float64 ``(n,)``) for preprocessed ``X``."""
        if self.is_classification:
            return self.preprocessing.labels(self.predictor.classes(X))
        return self.predictor.values(X)

    def predict_frame(self, X: np.ndarray) -> pd.DataFrame:
        """One row per input: ``prediction``, and for classification ``proba_<class>`` per
        class."""
        frame = pd.DataFrame({"prediction": self.predict(X)})
        if not self.is_classification:
            return frame
        proba = self.predict_proba(X)
        names = self.preprocessing.class_names
        for k, name in enumerate(names):
            frame[f"proba_{name}"] = proba[:, k]
        return frame

    def predict_file(self, path: str | Path) -> Prediction:
        """Predict every row of a file (see :meth:`Preprocessing.read` for what it may hold).

        Raises:
            SlemError: the file does not fit the run's preprocessing (one line naming what).
        """
        X, y, notes = self.preprocessing.read(path)
        frame = self.predict_frame(X)
        return Prediction(frame, self.score(frame, y), notes)

    def score(self, frame: pd.DataFrame, y: np.ndarray | None) -> dict[str, Any] | None:
        """Accuracy (classification) or MSE and MAE (regression) of ``frame``'s predictions
        against encoded targets ``y`` on the rows that have one; None without targets."""
        if y is None:
            return None
        if self.is_classification:
            known = y >= 0
            if not known.any():
                return None
            hits = frame["prediction"].to_numpy()[known] == self.preprocessing.labels(y[known])
            return {"rows": int(known.sum()), "accuracy": float(np.mean(hits))}
        known = ~np.isnan(y)
        if not known.any():
            return None
        err = frame["prediction"].to_numpy(dtype=np.float64)[known] - y[known]
        return {
            "rows": int(known.sum()),
            "mse": float(np.mean(err**2)),
            "mae": float(np.mean(np.abs(err))),
        }


@dataclass
class Prediction:
    """Predictions of a file's rows: ``frame`` (see :meth:`TrainedModel.predict_frame`),
    ``score`` when the file has targets, and ``notes`` on what was done to its rows."""

    frame: pd.DataFrame
    score: dict[str, Any] | None
    notes: list[str]


def run_with_model(run_dir: str | Path) -> Path:
    """``run_dir``, or the run an HPO directory refitted (``DIR/refit``), whichever holds a
    finished run.

    Raises:
        SlemError: neither is a finished run directory.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise SlemError(f"'{run_dir}' is a file; give the run directory (slem train --out)")
    if not run_dir.is_dir():
        raise SlemError(f"run directory '{run_dir}' does not exist")
    if (run_dir / "summary.json").is_file():
        return run_dir
    refit = run_dir / REFIT_DIR
    if (refit / "summary.json").is_file():
        return refit
    if (run_dir / "config.yaml").is_file():
        raise SlemError(
            f"'{run_dir}' holds an unfinished run (no summary.json); finish it with "
            f"'slem train --resume {run_dir}'"
        )
    starts = sorted(p.name for p in run_dir.glob("start-*") if (p / "summary.json").is_file())
    if starts:  # slem hpo study.strategy hypergradient: one training run per start
        raise SlemError(
            f"'{run_dir}' is a hypergradient study: its trained models are its runs "
            f"({', '.join(starts)}); best.json names the best, e.g. slem predict "
            f"{run_dir / starts[0]} --data ..."
        )
    if (run_dir / "hpo.yaml").is_file() or (run_dir / "best.json").is_file():
        best = run_dir / "best.yaml"
        train = f", or train its best.yaml: slem train {best}" if best.is_file() else ""
        raise SlemError(
            f"'{run_dir}' is a study without a refitted model; refit its best configuration: "
            f"slem hpo --resume --out {run_dir} --refit{train}"
        )
    if (run_dir / "methodology.json").is_file():
        raise SlemError(
            f"'{run_dir}' is a methodology artifact, not a trained model; train one with it: "
            f"slem apply {run_dir} --data new.csv --target COLUMN"
        )
    raise SlemError(f"'{run_dir}' is not a slem run directory (no summary.json)")


def load_trained(
    run_dir: str | Path, weights: Weights = "chosen", device: str | torch.device = "cpu"
) -> TrainedModel:
    """The model of a finished run (or of an HPO directory's ``refit/`` run).

    ``weights``: ``chosen`` (what the summary's ``weights.chosen`` says: the epoch validation
    chose when there was one), ``best`` or ``final``.

    Raises:
        SlemError: not a finished run; its preprocessing, config or weights are missing or
            damaged; ``best`` asked of a run without a chosen epoch; or the model in the
            config is not the one trained (a model given in Python).
    """
    from slem.train.run import read_run_config

    if weights not in WEIGHT_CHOICES:
        raise SlemError(f"weights '{weights}' is unknown; use one of {', '.join(WEIGHT_CHOICES)}")
    run_dir = run_with_model(run_dir)
    summary = read_json_object(run_dir / "summary.json")
    entry = summary.get("weights")
    if not (run_dir / "model.safetensors").is_file() and (run_dir / "methodology").is_dir():
        raise SlemError(f"'{run_dir}' learned a methodology, not a model; {_use_of(run_dir)}")
    if not isinstance(entry, dict) or "final" not in entry:
        raise SlemError(
            f"{run_dir}/summary.json does not say which weights it saved (a run from an older "
            "slem); train it again to predict with it"
        )
    which = str(entry.get("chosen", "final")) if weights == "chosen" else weights
    if which not in entry:
        raise SlemError(
            f"{run_dir} has no '{which}' weights (no epoch was chosen on validation); use "
            "--weights final"
        )
    preprocessing = Preprocessing.load(run_dir / PREPROCESSING_FILE)
    config = read_run_config(run_dir, task_given=True)
    n_out = len(preprocessing.class_names) if preprocessing.task_type == "classification" else 1
    model_info = summary.get("model")
    if isinstance(model_info, dict):
        with_import_root(model_info.get("import_root"))
    model = build_model(preprocessing.input_shape, n_out, **config.model.model_dump())
    path = run_dir / str(entry[which]["file"])
    try:
        state = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise SlemError(f"{path} could not be read ({exc}); restore it from a copy") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise SlemError(
            f"{path} does not fit the model config.yaml describes ({first}); a model given "
            "in Python is not in the config: load the weights into your own module"
        ) from None
    device = torch.device(device)
    model.to(device).eval()
    epoch = entry[which].get("epoch")
    return TrainedModel(
        predictor=Network(model, preprocessing, device),
        preprocessing=preprocessing,
        weights=which,
        epoch=int(epoch) if isinstance(epoch, int | float) and math.isfinite(epoch) else -1,
        run_dir=run_dir,
    )


def _use_of(run_dir: Path) -> str:
    """How to use the methodology a run learned: its kind's own command (``used_with``, with
    ``RUN`` / ``ARTIFACT`` standing for the run), else training a model with it."""
    from slem.methodology.base import REGISTRY, read_artifact_info

    try:
        used_with = REGISTRY[read_artifact_info(run_dir / "methodology")["kind"]].used_with
    except (SlemError, KeyError):
        used_with = ""
    if used_with:
        return "use it with: " + used_with.replace("RUN", str(run_dir)).replace(
            "ARTIFACT", str(run_dir)
        )
    return (
        f"train a model with it: slem apply {run_dir / 'methodology'} --data new.csv "
        "--target COLUMN"
    )
