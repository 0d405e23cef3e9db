"""What a study leaves a user to act on, next to ``best.json`` in its run directory.

* ``best.yaml`` (:func:`write_best_config`). For a ``train`` objective: the base training
  config with the best trial's params set, resolved (every field, as a run's
  ``config.yaml``; file paths absolute), so that ``slem train RUN/best.yaml --out runs/x``
  runs it as it is, from any directory. For ``cash``: the chosen configuration in readable
  form: its ``params`` (:func:`slem.automl.cash.build_pipeline` rebuilds the pipeline from
  them), the pipeline's ``steps`` with the parameters that differ from scikit-learn's
  defaults, the data, and the scores.
* the refit (``slem hpo --refit``) in ``RUN/refit/``. ``train``: the CLI trains
  :func:`best_train_config` once more with :func:`slem.train.train_run`: a normal run
  directory (``config.yaml``, ``summary.json``, ``model.safetensors``, ...). ``cash``
  (:func:`refit_cash`): the chosen pipeline fitted on the training and validation splits,
  saved with skops as ``pipeline.skops`` (read it with
  :func:`slem.automl.cash.load_pipeline`), ``preprocessing.json`` (how new rows become its
  inputs: :class:`slem.data.Preprocessing`) and ``pipeline.json`` (what the pipeline is, the
  trial, its scores, the input columns and class names); ``slem predict RUN`` uses them.

The best trial is the best *complete* trial on the study's objective, a validation score;
test scores are reported and never used to choose.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import yaml

from slem.automl.cash import pipeline_steps, save_pipeline
from slem.automl.objectives import CashTrial, TrainTrial
from slem.automl.study import SOURCE
from slem.data.preprocess import PREPROCESSING_FILE, Preprocessing
from slem.errors import SlemError
from slem.rundir import atomic_write_text
from slem.train.config_io import resolve_paths
from slem.train.predict import REFIT_DIR as REFIT_DIR  # where slem predict looks
from slem.train.predict import TrainedModel, Weights, load_trained

if TYPE_CHECKING:
    from slem.train.config import TrainConfig

BEST_CONFIG = "best.yaml"
PIPELINE_FILE = "pipeline.skops"
PIPELINE_INFO = "pipeline.json"
PIPELINE_FORMAT = "slem-cash-pipeline"


def best_train_config(objective: TrainTrial, params: Mapping[str, Any]) -> TrainConfig:
    """The training config of a trial: the base with ``params`` set, validated."""
    from slem.train.config import parse_train_config

    return parse_train_config(objective.values_for(params))


def _metric(objective: CashTrial | TrainTrial) -> str:
    return objective.config.metric


def _test(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {k: v for k, v in trial.user_attrs.items() if k.startswith("test_")}


def _numbers(values: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
    )


def write_best_config(
    study: optuna.Study,
    objective: CashTrial | TrainTrial,
    trial: optuna.trial.FrozenTrial,
    run_dir: Path,
) -> Path:
    """``run_dir/best.yaml`` for ``trial`` (the study's best; see the module docstring)."""
    path = run_dir / BEST_CONFIG
    metric = _metric(objective)
    test = _numbers(_test(trial)) or "none"
    head = [
        f"# slem hpo, study '{study.study_name}': the best configuration, trial {trial.number} "
        f"(source: {trial.user_attrs.get(SOURCE, 'sampler')}).",
        f"# {metric} {trial.value:.4f} on the validation split chose it; the test score",
        f"# ({test}) played no part.",
    ]
    if isinstance(objective, TrainTrial):
        cfg = best_train_config(objective, trial.params)
        head += [
            "# The base training config with these params set (every field; paths absolute):",
            *(f"#   {k}: {v}" for k, v in trial.params.items()),
            "# Run it with:",
            f"#   slem train {path} --out runs/{study.study_name}-best",
        ]
        body = cfg.model_dump(mode="json")
    else:
        head += [
            "# params rebuild the pipeline: slem.automl.cash.build_pipeline(params); steps are",
            "# its scikit-learn steps with the parameters that differ from the defaults.",
        ]
        body = cash_best(objective, trial, study.study_name)
    text = "\n".join(head) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)
    return path


def cash_best(
    objective: CashTrial, trial: optuna.trial.FrozenTrial, study_name: str
) -> dict[str, Any]:
    """The readable form of a CASH trial's configuration (the body of ``best.yaml``)."""
    from slem.automl.cash import build_pipeline

    params = dict(trial.params)
    return {
        "study": study_name,
        "trial": trial.number,
        "source": trial.user_attrs.get(SOURCE, "sampler"),
        "metric": objective.config.metric,
        "value": trial.value,
        "test": _test(trial),
        "data": _data(objective),
        "params": params,
        "steps": pipeline_steps(build_pipeline(params, objective.seed)),
    }


def _data(objective: CashTrial) -> dict[str, Any]:
    data = objective.config.data.model_dump(mode="json", exclude_defaults=True)
    return dict(resolve_paths({"data": data})["data"])


def check_refit_dir(run_dir: Path) -> None:
    """``--refit`` writes ``run_dir/refit``, which must not hold anything yet (checked before
    the study runs).

    Raises:
        SlemError: it exists and is not empty.
    """
    out = run_dir / REFIT_DIR
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlemError(
            f"--refit writes {out}, which already holds a refit; move it away (an interrupted "
            f"train refit continues with 'slem train --resume {out}'), or drop --refit"
        )


def refit_cash(
    objective: CashTrial, trial: optuna.trial.FrozenTrial, study_name: str, run_dir: Path
) -> dict[str, Any]:
    """Fit ``trial``'s pipeline on the training and validation splits and write
    ``run_dir/refit/pipeline.skops`` and ``pipeline.json``; returns the latter's contents
    (``test``: the refit pipeline's score on the test split)."""
    out = run_dir / REFIT_DIR
    params = dict(trial.params)
    pipe = objective.refit(params)
    test = objective.evaluate(pipe, "test")
    info = pipeline_info(objective, trial, study_name, test)
    out.mkdir(parents=True, exist_ok=True)
    save_pipeline(pipe, out / PIPELINE_FILE)
    atomic_write_text(out / PREPROCESSING_FILE, Preprocessing.of(objective.task).to_text())
    atomic_write_text(out / PIPELINE_INFO, json.dumps(info, indent=2, default=_plain))
    return info


def pipeline_info(
    objective: CashTrial, trial: optuna.trial.FrozenTrial, study_name: str, test: float
) -> dict[str, Any]:
    """The contents of ``pipeline.json``: what the pipeline is and how new rows reach it."""
    import sklearn
    import skops

    from slem import __version__

    task = objective.task
    return {
        "format": PIPELINE_FORMAT,
        "version": 1,
        "pipeline": PIPELINE_FILE,
        "load": "slem.automl.cash.load_pipeline(path)",
        "study": study_name,
        "trial": trial.number,
        "source": trial.user_attrs.get(SOURCE, "sampler"),
        "params": dict(trial.params),
        "metric": objective.config.metric,
        "val": trial.value,
        "test": test,
        "fitted_on": ["train", "val"],
        "rows": len(task.train) + len(task.val),
        "task_type": task.task_type,
        "dataset": task.name,
        "data": _data(objective),
        "inputs": (
            f"rows encoded and standardized as {PREPROCESSING_FILE} says "
            "(slem.data.Preprocessing.load(path).read(file)); slem predict does it"
        ),
        "n_features": int(np.prod(task.train.X.shape[1:])),
        "feature_names": task.encoder.input_names if task.encoder is not None else None,
        "class_names": list(task.class_names),
        "predicts": "class indices: class_names[i] is the label of prediction i",
        "versions": {
            "slem": __version__,
            "scikit-learn": sklearn.__version__,
            "skops": skops.__version__,
        },
    }


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass
class PipelinePredictor:
    """A fitted scikit-learn pipeline as a :class:`slem.train.predict.Predictor`: inputs
    flattened to ``(n, d)``, predictions as class indices (the CASH pipeline's labels) with
    ``predict_proba``'s columns placed at their classes (a one-hot of ``predict`` for a
    model without probabilities)."""

    model: Any
    n_classes: int

    def classes(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(X.reshape(len(X), -1)), dtype=np.int64)

    def proba(self, X: np.ndarray) -> np.ndarray:
        flat = X.reshape(len(X), -1)
        full = np.zeros((len(X), self.n_classes))
        if hasattr(self.model, "predict_proba"):
            columns = np.asarray(self.model.classes_, dtype=np.int64)
            full[:, columns] = self.model.predict_proba(flat)
        else:
            full[np.arange(len(X)), self.classes(X)] = 1.0
        return full

    def values(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(X.reshape(len(X), -1)), dtype=np.float64)


def load_model(run_dir: str | Path, weights: Weights = "chosen") -> TrainedModel:
    """What ``slem predict`` uses: the scikit-learn pipeline a CASH study refitted
    (``pipeline.skops`` in ``run_dir`` or ``run_dir/refit``, with its
    ``preprocessing.json``), else the network of a training run
    (:func:`slem.train.load_trained`, which also finds a train study's ``refit/`` run).

    Raises:
        SlemError: neither is there, a file is missing or damaged, or ``weights`` other
            than ``chosen`` asked of a pipeline (it has a single fit).
    """
    from slem.automl.cash import load_pipeline

    run_dir = Path(run_dir)
    for where in (run_dir, run_dir / REFIT_DIR):
        if (where / PIPELINE_FILE).is_file():
            if weights != "chosen":
                raise SlemError(
                    f"{where} holds a refitted scikit-learn pipeline, which has one fit; "
                    "drop --weights"
                )
            preprocessing = Preprocessing.load(where / PREPROCESSING_FILE)
            n_classes = len(preprocessing.class_names)
            return TrainedModel(
                predictor=PipelinePredictor(load_pipeline(where / PIPELINE_FILE), n_classes),
                preprocessing=preprocessing,
                weights="pipeline",
                epoch=-1,
                run_dir=where,
            )
    return load_trained(run_dir, weights)
